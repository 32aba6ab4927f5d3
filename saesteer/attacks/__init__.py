"""Attacks on a (steered) model, scored for refusal and success: the stage beside `evaluate/`.

Multi-turn today: `replay` plays fixed conversations, `crescendo` runs an attacker LLM that
escalates towards an objective. What attacks share sits in one module each: `base` (run folder,
the steered target's next turn, the refusal judge), `objectives`, `attacker` (the attacker's
prompt and replies), `scorers` (success judges) and `backends` (attacker and judge LLMs). A new
attack (a single-turn template, encoding, prefilling or many-shot attack) is one more module
here that builds on them.
"""

from saesteer.attacks.backends import ChatBackend, make_backend
from saesteer.attacks.crescendo import CrescendoConfig, run_crescendo, summarise_crescendo
from saesteer.attacks.objectives import PAPER_OBJECTIVES, Objective, load_objectives
from saesteer.attacks.replay import ReplayConfig, evaluate_replay, summarise_replay
from saesteer.attacks.scorers import LLMScorer, OfflineScorer, Scorer

__all__ = ["PAPER_OBJECTIVES", "ChatBackend", "CrescendoConfig", "LLMScorer", "Objective", "OfflineScorer",
           "ReplayConfig", "Scorer", "evaluate_replay", "load_objectives", "make_backend", "run_crescendo",
           "summarise_crescendo", "summarise_replay"]
