"""Attacks on a (steered) model: the stage beside `evaluate/` (multi-turn: replay, Crescendo)."""
