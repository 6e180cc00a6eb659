"""Export: ONNX (onnx.py, the stage), parity with PyTorch, attention fusion, int8 tuned against accuracy,
the Triton Inference Server repository."""
