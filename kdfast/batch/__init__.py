"""Corpus-scale scoring: files of any size through a run's model, on one machine (:mod:`kdfast.batch.columnar`) or
a Ray cluster (:mod:`kdfast.batch.ray_engine`), and the teacher's logits for distillation (:mod:`kdfast.batch.label`).
"""
