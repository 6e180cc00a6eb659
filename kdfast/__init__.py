"""kdfast: a LoRA GPT-2 teacher on CoLA, distilled into a small RNN student, made fast and exported."""

__version__ = "0.1.0"
