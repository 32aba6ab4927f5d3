"""`saesteer eval refusal` (placeholder until built)."""

from saesteer.cli.common import eval_app, not_built

not_built("refusal", "Refusal and over-refusal of a (steered) model.", eval_app)
