"""Training: the loggers of a run (loggers.py)."""
