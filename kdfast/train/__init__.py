"""Training: the LoRA teacher, the RNN student, distillation, and what their loops share (seeding, the
optimiser, data-parallel helpers)."""
