"""Multi-feature steering sets, chosen by greedy forward selection on the causal-check prompts.

Start from the latent whose edit scored best on its own; at each step try adding each remaining
latent of the pool (with its own best edit) and keep the one that raises the causal score most;
stop when no addition raises it or the set is full. The score is the same as for one latent:
coherent refusal gained on harmful prompts minus refusal gained on harmless ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saesteer.steer import FeatureEdit


@dataclass
class FeatureSet:
    edits: list[FeatureEdit]
    score: float
    harmful_refusal: float
    harmless_refusal: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    """Per step, every set tried with its score: the record of the selection."""

    def to_json(self) -> dict[str, Any]:
        return {"features": [e.feature for e in self.edits],
                "edits": [{"feature": e.feature, "op": e.op, "value": e.value} for e in self.edits],
                "score": self.score, "harmful_refusal": self.harmful_refusal,
                "harmless_refusal": self.harmless_refusal, "steps": self.steps}


def greedy_feature_set(candidates: list[dict[str, Any]],
                       rates: Callable[[list[list[FeatureEdit]]], list[tuple[float, float]]],
                       baseline: tuple[float, float], *, pool: int = 8, max_size: int = 4) -> FeatureSet:
    """`candidates` are discovery's checked features, best first (`feature`, `best_value`,
    `causal_score`, and the rates at that value); `rates(sets)` steers with each set's edits
    together and returns, per set, (harmful coherent refusal, harmless refusal) on the
    causal-check prompts. A step's sets go to `rates` in one call, so they can share batches."""
    base_h, base_s = baseline

    def score(h: float, s: float) -> float:
        return (h - base_h) - (s - base_s)

    ranked = candidates[:pool]
    first = ranked[0]
    best = next(c for c in first["causal"] if c["value"] == first["best_value"])
    current = FeatureSet([FeatureEdit(first["feature"], "clamp", first["best_value"])], first["causal_score"],
                         best["harmful_refusal"], best["harmless_refusal"])
    while len(current.edits) < max_size:
        used = {e.feature for e in current.edits}
        sets = [current.edits + [FeatureEdit(cand["feature"], "clamp", cand["best_value"])]
                for cand in ranked if cand["feature"] not in used]
        tried = [(score(h, s), h, s, edits) for edits, (h, s) in zip(sets, rates(sets) if sets else [])]
        if not tried:
            break
        current.steps.append({"from": [e.feature for e in current.edits],
                              "tried": [{"add": t[3][-1].feature, "score": round(t[0], 4),
                                         "harmful_refusal": t[1], "harmless_refusal": t[2]} for t in tried]})
        top = max(tried, key=lambda t: (t[0], t[1]))
        if top[0] <= current.score:
            break
        current = FeatureSet(top[3], top[0], top[1], top[2], current.steps)
    return current
