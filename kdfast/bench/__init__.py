"""Benchmarking: measure.py (kdfast bench), variants.py (how each variant is built), report.py (its files)."""
