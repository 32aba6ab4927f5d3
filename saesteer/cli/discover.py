"""`saesteer discover` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("discover", "Find refusal features of an SAE.")
