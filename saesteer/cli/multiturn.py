"""`saesteer eval multiturn` (placeholder until built)."""

from saesteer.cli.common import eval_app, not_built

not_built("multiturn", "Crescendo attacks and multi-turn replays.", eval_app)
