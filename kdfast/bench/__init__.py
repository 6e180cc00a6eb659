"""Benchmarking: measure.py (kdfast bench), variants.py (how each variant is built), report.py (its files);
harness.py (the timer, environment stamp and writers that kdfast bench and every script of benchmarks/ share);
lora_matmul.py and memory_floor.py (the logic of those two benchmarks/ scripts, importable by the tests)."""
