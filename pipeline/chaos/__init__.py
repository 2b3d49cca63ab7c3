"""Chaos suite: fault scenarios on the real pipeline, with the checks every run must pass."""
