"""`saesteer eval capability` (placeholder until built)."""

from saesteer.cli.common import eval_app, not_built

not_built("capability", "MMLU, TruthfulQA and GSM8K under steering.", eval_app)
