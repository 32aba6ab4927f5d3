"""`saesteer train` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("train", "Train a Top-k SAE on harvested activations.")
