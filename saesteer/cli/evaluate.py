"""`saesteer eval ...` (placeholders until the evaluations are built)."""

from saesteer.cli.common import eval_app, not_built

not_built("refusal", "Refusal and over-refusal of a (steered) model.", eval_app)
not_built("capability", "MMLU, TruthfulQA and GSM8K under steering.", eval_app)
not_built("multiturn", "Crescendo attacks and multi-turn replays.", eval_app)
not_built("sae", "Reconstruction and spliced-model metrics of an SAE.", eval_app)
