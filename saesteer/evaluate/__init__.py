"""Evaluation: the refusal judge and the evaluators built on it."""
