"""Using a trained run: ``predict.py`` (the classifier behind ``kdfast predict`` and ``kdfast.load``), ``inputs.py``
(sentences from arguments, files and standard input) and ``server.py`` (``kdfast serve``, on LitServe)."""
