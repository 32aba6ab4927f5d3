"""`saesteer judge` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("judge", "Judge (prompt, response) pairs for refusal.")
