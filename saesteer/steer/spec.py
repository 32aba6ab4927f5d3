"""The steering spec: a versioned YAML/JSON file that says exactly how a model is steered.

    saesteer_spec: 1
    name: refusal-clamp
    model: {id: HuggingFaceTB/SmolLM2-135M-Instruct, revision: "sha256:b179c952..."}
    positions: all                      # all | prompt | generated
    interventions:
      - hook: model.layers.12
        sae: {path: ../sae, sha256: 3f1c...}
        features: [{feature: 1234, op: clamp, value: 12}]
      - hook: model.layers.10
        vector: {path: directions.safetensors, key: caa.model.layers.10}
        op: add                         # add | project_out | clamp
        value: 1.0
    condition:                          # optional: steer only prompts the detector flags
      detector: sae_feature             # sae_feature | probe | direction
      hook: model.layers.12
      sae: {path: ../sae}
      feature: 77
      pooling: max                      # max | mean | last
      scope: last_turn                  # optional: read only the final user message (default: whole prompt)
      threshold: 3.1

Relative paths are resolved against the spec file's folder. Discovery writes specs; generate,
eval, sweep and serve read them, and every result records `spec_hash()`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saesteer.errors import SaesteerError
from saesteer.files import sha256_json, write_text
from saesteer.steer.conditions import SCOPES
from saesteer.steer.interventions import POSITIONS, FeatureEdit

SPEC_VERSION = 1


@dataclass
class FileRef:
    """A file the spec depends on, pinned by its sha256 when known."""

    path: str
    sha256: str | None = None
    key: str | None = None
    """Tensor name inside a safetensors file (steering vectors, probe weights)."""


@dataclass
class InterventionSpec:
    hook: str
    """Module path (`model.layers.12`) or layer index."""
    sae: FileRef | None = None
    features: list[FeatureEdit] = field(default_factory=list)
    vector: FileRef | None = None
    op: str = "add"
    """For vectors: add, project_out or clamp."""
    value: float = 1.0

    def __post_init__(self) -> None:
        if (self.sae is None) == (self.vector is None):
            raise SaesteerError(f"intervention at {self.hook} needs exactly one of `sae` or `vector`")
        if self.sae is not None and not self.features:
            raise SaesteerError(f"SAE intervention at {self.hook} lists no features")


@dataclass
class ConditionSpec:
    detector: str
    """sae_feature, probe or direction."""
    hook: str
    threshold: float
    pooling: str = "max"
    sae: FileRef | None = None
    feature: int | None = None
    vector: FileRef | None = None
    """Probe weights or the condition direction."""
    bias: float = 0.0
    direction: str = "above"
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the threshold was chosen (target false-positive rate, validation set, scores)."""
    scope: str | None = None
    """None or "prompt": read the whole prompt's text; "last_turn": only the final user message's."""

    def __post_init__(self) -> None:
        if self.scope is not None and self.scope not in SCOPES:
            raise SaesteerError(f"unknown condition scope {self.scope!r}; use {' or '.join(SCOPES)}")
        if self.detector not in ("sae_feature", "probe", "direction"):
            raise SaesteerError(f"unknown detector {self.detector!r}; use sae_feature, probe or direction")
        if self.detector == "sae_feature" and (self.sae is None or self.feature is None):
            raise SaesteerError("an sae_feature condition needs `sae` and `feature`")
        if self.detector != "sae_feature" and self.vector is None:
            raise SaesteerError(f"a {self.detector} condition needs `vector`")
        if self.direction not in ("above", "below"):
            raise SaesteerError("condition direction must be above or below")


@dataclass
class SteeringSpec:
    interventions: list[InterventionSpec]
    positions: str = "all"
    condition: ConditionSpec | None = None
    name: str | None = None
    description: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    """`id` and `revision` of the model the spec was made for."""
    base_dir: Path | None = None
    """Folder that relative paths refer to (not saved)."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise SaesteerError(f"unknown positions {self.positions!r}; use {', '.join(POSITIONS)}")

    # --- (de)serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def clean(obj: Any) -> Any:
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items() if v not in (None, [], {})}
            if isinstance(obj, list):
                return [clean(v) for v in obj]
            return obj

        body = asdict(self)
        body.pop("base_dir")
        return {"saesteer_spec": SPEC_VERSION, **clean(body)}

    def hash(self) -> str:
        """Content hash: the spec's fields plus the hashes of the files it pins."""
        return sha256_json(self.to_dict())[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        body = self.to_dict()
        text = json.dumps(body, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(body, sort_keys=False)
        write_text(path, text)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path | None = None) -> SteeringSpec:
        if not isinstance(data, dict):
            raise SaesteerError("a steering spec must be a mapping (YAML/JSON object)")
        version = data.get("saesteer_spec")
        if version != SPEC_VERSION:
            raise SaesteerError(f"steering spec version {version!r} is not supported; this saesteer reads "
                                f"version {SPEC_VERSION} (`saesteer_spec: {SPEC_VERSION}`)")
        try:
            interventions = [_intervention(d) for d in data.get("interventions") or []]
            condition = _condition(data["condition"]) if data.get("condition") else None
            spec = cls(interventions=interventions, positions=data.get("positions", "all"),
                       condition=condition, name=data.get("name"), description=data.get("description"),
                       model=dict(data.get("model") or {}),
                       base_dir=Path(base_dir) if base_dir is not None else None)
        except (TypeError, KeyError, ValueError) as e:
            raise SaesteerError(f"malformed steering spec: {e}") from e
        if not spec.interventions:
            raise SaesteerError("steering spec has no interventions")
        return spec

    @classmethod
    def load(cls, path: str | Path) -> SteeringSpec:
        path = Path(path)
        if not path.is_file():
            raise SaesteerError(f"steering spec {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is valid YAML
        except yaml.YAMLError as e:
            raise SaesteerError(f"steering spec {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from e
        return cls.from_dict(data, base_dir=path.parent)

    def resolve_path(self, ref: FileRef) -> Path:
        p = Path(ref.path).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p


def _ref(d: Any) -> FileRef | None:
    if d is None:
        return None
    if isinstance(d, str):
        return FileRef(path=d)
    return FileRef(**d)


def _intervention(d: dict[str, Any]) -> InterventionSpec:
    features = []
    for f in d.get("features") or []:
        if isinstance(f, dict):
            features.append(FeatureEdit(feature=int(f.get("feature", f.get("id"))), op=f.get("op", "clamp"),
                                        value=float(f.get("value", 0.0))))
        else:
            raise SaesteerError(f"feature edits must be mappings like {{feature: 12, op: clamp, value: 10}}, got {f!r}")
    return InterventionSpec(hook=str(d["hook"]), sae=_ref(d.get("sae")), features=features,
                            vector=_ref(d.get("vector")), op=d.get("op", "add"), value=float(d.get("value", 1.0)))


def _condition(d: dict[str, Any]) -> ConditionSpec:
    return ConditionSpec(detector=d["detector"], hook=str(d["hook"]), threshold=float(d["threshold"]),
                         pooling=d.get("pooling", "max"), sae=_ref(d.get("sae")),
                         feature=int(d["feature"]) if d.get("feature") is not None else None,
                         vector=_ref(d.get("vector")), bias=float(d.get("bias", 0.0)),
                         direction=d.get("direction", "above"), calibration=dict(d.get("calibration") or {}),
                         scope=d.get("scope"))


def sae_clamp_spec(sae_dir: str | Path, hook: str, edits: list[FeatureEdit], *, positions: str = "all",
                   sha256: str | None = None, name: str | None = None) -> SteeringSpec:
    """The paper's intervention (clamp latents at one hook), as a spec."""
    return SteeringSpec(interventions=[InterventionSpec(hook=hook, sae=FileRef(str(sae_dir), sha256), features=edits)],
                        positions=positions, name=name)
