"""Gates a search can put in front of an intervention: the detectors `saesteer discover` wrote,
each scored once on every prompt, with thresholds set on calibration prompts.

A detector's threshold candidates are the scores at which it would flag a chosen share (the
target false-positive rates) of the calibration set's safe prompts, and of the calibration half
of the few-shot capability prompts, whichever threshold is higher. The calibration prompts are
not the prompts a search scores its settings on, so a threshold is never fitted to the answers
it is judged by.

Each discovery detector can gate two ways: as discovery wrote it (the mean of its per-token
scores over the whole prompt) and `_window` (the best 16-token stretch of the last turn only). A
window still sees a request wrapped in a jailbreak template or preceded by fabricated turns,
where a mean over the whole prompt is diluted below its threshold (docs/RESULTS.md, "A gate that
reads the best stretch").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.evaluate.detector import detectors_scores
from saesteer.files import read_json, sha256_json, write_json
from saesteer.models import ChatModel, PromptLike
from saesteer.steer import ConditionSpec, SteeringSpec
from saesteer.steer.conditions import threshold_for_fpr

GATE_FILES = {"sae_probe": "conditional_probe.yaml", "probe": "conditional_dense_probe.yaml",
              "sae_feature": "conditional.yaml"}
"""Gate name -> the discovery spec whose condition it uses."""
WINDOW = "_window"
WINDOW_READING = {"pooling": "window16", "scope": "last_turn"}
"""How a `_window` gate reads the prompt."""
GATE_NAMES = (*GATE_FILES, *(g + WINDOW for g in GATE_FILES))
SAE_GATES = tuple(g + reading for reading in ("", WINDOW) for g in ("sae_probe", "sae_feature"))


def gate_file(name: str) -> str:
    """The discovery spec file a gate's detector comes from."""
    return GATE_FILES[name.removesuffix(WINDOW)]


def check_gate_names(names: tuple[str, ...]) -> None:
    if not names:
        raise SaesteerError("--gates is empty; give none and/or a detector")
    for name in names:
        if name != "none" and name not in GATE_NAMES:
            raise SaesteerError(f"unknown gate {name!r}; use none, {', '.join(GATE_NAMES)}")


@dataclass
class Gate:
    name: str
    condition: ConditionSpec = field(repr=False)
    scores: dict[str, float]
    """Search prompt id -> pooled detector score, sign-flipped for `below` detectors."""
    calibration: list[float]
    capability: list[float]
    """Scores of the capability prompts the objective counts (not those calibrated on)."""
    capability_calibration: list[float] = field(default_factory=list)
    wrapped: list[float] = field(default_factory=list)
    """Scores of unsafe search prompts wrapped in jailbreak templates."""

    @property
    def sae_based(self) -> bool:
        return self.name in SAE_GATES

    def thresholds(self, target_fprs: tuple[float, ...]) -> list[tuple[float, float]]:
        """(target false-positive rate, threshold) pairs, one per distinct threshold."""
        seen: dict[float, float] = {}
        for fpr in sorted(target_fprs):
            threshold = threshold_for_fpr(self.calibration, fpr)
            if self.capability_calibration:
                threshold = max(threshold, threshold_for_fpr(self.capability_calibration, fpr))
            seen.setdefault(threshold, fpr)
        return [(fpr, thr) for thr, fpr in seen.items()]

    def fires(self, threshold: float) -> dict[str, bool]:
        return {i: s > threshold for i, s in self.scores.items()}

    def capability_fires(self, threshold: float) -> list[bool]:
        return [s > threshold for s in self.capability]

    def wrapped_fires(self, threshold: float) -> list[bool]:
        return [s > threshold for s in self.wrapped]

    def condition_at(self, threshold: float, target_fpr: float, calibration: str) -> ConditionSpec:
        """The discovery condition with this threshold (back in the detector's own sign)."""
        on = calibration + (f" + {len(self.capability_calibration)} few-shot capability prompts"
                            if self.capability_calibration else "")
        return replace(self.condition, threshold=threshold if self.condition.direction == "above" else -threshold,
                       calibration={"target_fpr": target_fpr, "on": on,
                                    "n_calibration": len(self.calibration) + len(self.capability_calibration),
                                    "chosen_by": "saesteer search"})


@dataclass
class GatePrompts:
    """Every prompt a gate is scored on, once."""

    search: dict[str, PromptLike]
    calibration: list[PromptLike]
    capability: list[PromptLike]
    capability_calibration: list[PromptLike] = field(default_factory=list)
    wrapped: list[PromptLike] = field(default_factory=list)

    def groups(self) -> dict[str, list[PromptLike]]:
        return {"scores": list(self.search.values()), "calibration": self.calibration, "capability": self.capability,
                "capability_calibration": self.capability_calibration, "wrapped": self.wrapped}


def gate_spec(discovery: Path, name: str) -> SteeringSpec:
    """The discovery spec whose condition the gate `name` uses, read the way the name says."""
    path = discovery / gate_file(name)
    if not path.exists():
        raise SaesteerError(f"{path} not found: the discovery folder has no {name.removesuffix(WINDOW)} detector; "
                            f"rerun saesteer discover, or leave {name} out of --gates")
    spec = SteeringSpec.load(path).with_paths(None)
    if spec.condition is None:
        raise SaesteerError(f"{path} has no condition; it cannot gate a search")
    if name.endswith(WINDOW):
        spec.condition = replace(spec.condition, **WINDOW_READING)
    return spec


def load_gates(lm: ChatModel, discovery: Path, names: tuple[str, ...], prompts: GatePrompts, cache: Path, *,
               batch_size: int = 16) -> list[Gate]:
    """Score every prompt with each named detector (cached in `cache`, one JSON per gate)."""
    groups = prompts.groups()
    prompts_hash = sha256_json({"ids": list(prompts.search), **groups})
    specs = {name: gate_spec(discovery, name) for name in names if name != "none"}
    data: dict[str, dict] = {}
    for name, spec in specs.items():
        cached = cache / f"{name}.json"
        found = read_json(cached) if cached.exists() else None
        if isinstance(found, dict) and found.get("spec_hash") == spec.hash() and found.get("prompts_hash") == prompts_hash:
            data[name] = found
    todo = [name for name in specs if name not in data]
    if todo:
        everything = [p for group in groups.values() for p in group]
        scored = detectors_scores(lm, [specs[n] for n in todo], everything, batch_size=batch_size,
                                  progress=f"gates {', '.join(todo)}")
        for name, raw in zip(todo, scored):
            sign = 1.0 if specs[name].condition.direction == "above" else -1.0   # type: ignore[union-attr]
            raw = [sign * s for s in raw]
            entry: dict = {"spec_hash": specs[name].hash(), "prompts_hash": prompts_hash}
            for key, group in groups.items():
                entry[key], raw = raw[:len(group)], raw[len(group):]
            entry["scores"] = dict(zip(prompts.search, entry["scores"]))
            write_json(cache / f"{name}.json", entry)
            data[name] = entry
    return [Gate(name, spec.condition, data[name]["scores"], data[name]["calibration"],  # type: ignore[arg-type]
                 data[name]["capability"], data[name]["capability_calibration"], data[name]["wrapped"])
            for name, spec in specs.items()]
