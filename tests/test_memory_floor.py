"""benchmarks/memory_floor.py: the bytes a forward pass streams (embeddings excluded, int8 matrices at 1 byte)."""

from transformers import GPT2Config, GPT2ForSequenceClassification

from kdfast.bench.memory_floor import streamed_bytes


def test_streamed_bytes_of_gpt2() -> None:
    d, layers, vocab, positions = 16, 2, 50, 32
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=d, n_layer=layers, n_head=2, vocab_size=vocab,
                                                     n_positions=positions, num_labels=2,
                                                     bos_token_id=0, eos_token_id=0, pad_token_id=0))
    matrices = layers * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + d * 2  # c_attn, c_proj, c_fc, mlp.c_proj; score
    vectors = layers * (3 * d + d + 4 * d + d) + (2 * layers + 1) * 2 * d  # their biases; ln_1, ln_2, ln_f
    assert sum(p.numel() for p in model.parameters()) == matrices + vectors + (vocab + positions) * d
    sizes = streamed_bytes(model)
    assert sizes == {"fp32": 4 * (matrices + vectors), "int8": matrices + 4 * vectors}
