"""`saesteer sweep` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("sweep", "Run a grid of steering methods and strengths.")
