"""Gates a search can put in front of an intervention: the detectors `saesteer discover` wrote,
each scored once on every prompt, with thresholds set on calibration prompts.

A detector's threshold candidates are the scores at which it would flag a chosen share (the
target false-positive rates) of the calibration set's safe prompts. The calibration prompts are
not the prompts a search scores its settings on, so a threshold is never fitted to the answers
it is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.evaluate.detector import detector_scores
from saesteer.files import read_json, write_json
from saesteer.models import ChatModel, PromptLike
from saesteer.steer import ConditionSpec, SteeringSpec
from saesteer.steer.conditions import threshold_for_fpr

GATE_FILES = {"sae_probe": "conditional_probe.yaml", "probe": "conditional_dense_probe.yaml",
              "sae_feature": "conditional.yaml"}
"""Gate name -> the discovery spec whose condition it uses."""
SAE_GATES = ("sae_probe", "sae_feature")


def check_gate_names(names: tuple[str, ...]) -> None:
    if not names:
        raise SaesteerError("--gates is empty; give none and/or a detector")
    for name in names:
        if name != "none" and name not in GATE_FILES:
            raise SaesteerError(f"unknown gate {name!r}; use none, {', '.join(GATE_FILES)}")


@dataclass
class Gate:
    name: str
    condition: ConditionSpec = field(repr=False)
    scores: dict[str, float]
    """Search prompt id -> pooled detector score, sign-flipped for `below` detectors."""
    calibration: list[float]
    capability: list[float]

    @property
    def sae_based(self) -> bool:
        return self.name in SAE_GATES

    def thresholds(self, target_fprs: tuple[float, ...]) -> list[tuple[float, float]]:
        """(target false-positive rate, threshold) pairs, one per distinct threshold."""
        seen: dict[float, float] = {}
        for fpr in sorted(target_fprs):
            seen.setdefault(threshold_for_fpr(self.calibration, fpr), fpr)
        return [(fpr, thr) for thr, fpr in seen.items()]

    def fires(self, threshold: float) -> dict[str, bool]:
        return {i: s > threshold for i, s in self.scores.items()}

    def capability_fires(self, threshold: float) -> list[bool]:
        return [s > threshold for s in self.capability]

    def condition_at(self, threshold: float, target_fpr: float, calibration: str) -> ConditionSpec:
        """The discovery condition with this threshold (back in the detector's own sign)."""
        return replace(self.condition, threshold=threshold if self.condition.direction == "above" else -threshold,
                       calibration={"target_fpr": target_fpr, "on": calibration,
                                    "n_calibration": len(self.calibration), "chosen_by": "saesteer search"})


def load_gates(lm: ChatModel, discovery: Path, names: tuple[str, ...], prompts: dict[str, PromptLike],
               calibration: list[PromptLike], capability: list[PromptLike], cache: Path, *,
               batch_size: int = 16) -> list[Gate]:
    """Score every prompt with each named detector (cached in `cache`, one JSON per gate)."""
    gates = []
    for name in names:
        if name == "none":
            continue
        path = discovery / GATE_FILES[name]
        if not path.exists():
            raise SaesteerError(f"{path} not found: the discovery folder has no {name} detector; rerun saesteer "
                                f"discover, or leave {name} out of --gates")
        spec = SteeringSpec.load(path).with_paths(None)
        cond = spec.condition
        if cond is None:
            raise SaesteerError(f"{path} has no condition; it cannot gate a search")
        sign = 1.0 if cond.direction == "above" else -1.0
        cached = cache / f"{name}.json"
        data = read_json(cached) if cached.exists() else None
        if not (isinstance(data, dict) and data.get("spec_hash") == spec.hash() and set(data.get("scores", {})) == set(prompts)
                and len(data.get("calibration", [])) == len(calibration) and len(data.get("capability", [])) == len(capability)):
            ids = list(prompts)
            everything = [prompts[i] for i in ids] + list(calibration) + list(capability)
            raw = [sign * s for s in detector_scores(lm, spec, everything, batch_size=batch_size, progress=f"gate {name}")]
            data = {"spec_hash": spec.hash(), "scores": dict(zip(ids, raw[:len(ids)])),
                    "calibration": raw[len(ids):len(ids) + len(calibration)],
                    "capability": raw[len(ids) + len(calibration):]}
            write_json(cached, data)
        gates.append(Gate(name, cond, data["scores"], data["calibration"], data["capability"]))
    return gates
