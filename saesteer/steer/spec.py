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
      pooling: max                      # max | mean | last | window16 (best 16-token mean)
      scope: last_turn                  # optional: read only the final user message (default: whole prompt)
      threshold: 3.1

Relative paths are resolved against the spec file's folder, and `save` writes every path
relative to it, so a spec folder that is copied or moved with its files still works (the sha256
pins still catch changed files). Discovery writes specs; generate, eval, sweep and serve read
them, and every result records `spec_hash()`. Unknown keys are refused, naming the nearest
valid one.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from saesteer.errors import SaesteerError
from saesteer.files import sha256_json, write_text
from saesteer.steer.conditions import SCOPES, check_pooling
from saesteer.steer.interventions import POSITIONS, FeatureEdit, check_value

SPEC_VERSION = 1
DETECTORS = ("sae_feature", "sae_probe", "probe", "direction")


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
        if self.vector is not None and self.op not in ("add", "project_out", "clamp"):
            raise SaesteerError(f"unknown vector op {self.op!r} at {self.hook}; use add, project_out or clamp")
        if self.sae is not None and self.op != "add":
            # written as `op: add` beside every SAE intervention; anything else is a misplaced edit
            raise SaesteerError(f"SAE intervention at {self.hook} has op {self.op!r}: an SAE intervention's op "
                                "belongs to each entry under `features` (remove it, or set op: add)")
        self.value = check_value(self.value, f"vector {self.op} at {self.hook}")


@dataclass
class ConditionSpec:
    detector: str
    """sae_feature, sae_probe (sparse probe over SAE latents), probe (dense) or direction."""
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
        check_pooling(self.pooling)
        for name in ("threshold", "bias"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SaesteerError(f"condition {name} must be a finite number, got {value!r}; "
                                    "a NaN threshold never fires")
        if self.feature is not None and (isinstance(self.feature, bool) or not isinstance(self.feature, int)
                                         or self.feature < 0):
            raise SaesteerError(f"condition feature must be a latent index (a whole number >= 0), got {self.feature!r}")
        if self.detector not in DETECTORS:
            raise SaesteerError(f"unknown detector {self.detector!r}; use {', '.join(DETECTORS)}")
        if self.detector == "sae_feature" and (self.sae is None or self.feature is None):
            raise SaesteerError("an sae_feature condition needs `sae` and `feature`")
        if self.detector == "sae_probe" and self.sae is None:
            raise SaesteerError("an sae_probe condition needs `sae` (and `vector`: its weights over the latents)")
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
        """Write the spec with every file path relative to `path`'s folder."""
        path = Path(path)
        body = self.with_paths(path.parent).to_dict()
        text = json.dumps(body, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(body, sort_keys=False)
        write_text(path, text)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path | None = None) -> SteeringSpec:
        """Parse a spec; every key and value is checked here, once (unknown keys are refused)."""
        data = _mapping(data, "the spec", SPEC_KEYS)
        version = data.get("saesteer_spec")
        if version != SPEC_VERSION:
            raise SaesteerError(f"steering spec version {version!r} is not supported; this saesteer reads "
                                f"version {SPEC_VERSION} (`saesteer_spec: {SPEC_VERSION}`)")
        raw = data.get("interventions")
        if raw is None or raw == []:
            raise SaesteerError("the spec has no interventions; list at least one (`interventions: [{hook: ...}]`)")
        if not isinstance(raw, list):
            raise SaesteerError(f"`interventions` must be a list (`interventions: [{{hook: ..., ...}}]`), got {_kind(raw)}")
        interventions = [_intervention(d, i) for i, d in enumerate(raw)]
        condition = _condition(data["condition"]) if data.get("condition") is not None else None
        model = _mapping(data.get("model") or {}, "`model`", ("id", "revision"))
        spec = cls(interventions=interventions, positions=_text(data.get("positions", "all"), "positions"),
                   condition=condition, name=_text(data.get("name"), "name", optional=True),
                   description=_text(data.get("description"), "description", optional=True),
                   model=dict(model), base_dir=Path(base_dir) if base_dir is not None else None)
        return spec

    @classmethod
    def load(cls, path: str | Path) -> SteeringSpec:
        path = Path(path)
        if path.is_dir():
            specs = sorted(p.name for p in path.glob("*.y*ml"))
            hint = f"; it holds {', '.join(specs[:4])}" if specs else ""
            raise SaesteerError(f"steering spec {path} is a folder: give a spec file such as {path / 'best.yaml'}{hint}")
        if not path.is_file():
            raise SaesteerError(f"steering spec {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is valid YAML
        except UnicodeDecodeError as e:
            raise SaesteerError(f"steering spec {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
        except yaml.YAMLError as e:
            raise SaesteerError(f"steering spec {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from e
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except SaesteerError as e:
            raise SaesteerError(f"steering spec {path}: {e}") from e

    def resolve_path(self, ref: FileRef) -> Path:
        p = Path(ref.path).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p

    def with_paths(self, folder: str | Path | None) -> SteeringSpec:
        """A copy whose file paths are relative to `folder` (absolute when None) and resolve there."""
        spec = copy.deepcopy(self)
        root = Path(folder).resolve() if folder is not None else None
        refs = [r for iv in spec.interventions for r in (iv.sae, iv.vector)]
        if spec.condition is not None:
            refs += [spec.condition.sae, spec.condition.vector]
        # Resolve every path before rewriting any: a copied spec may share one FileRef between an
        # intervention and its condition.
        targets = {id(ref): (ref, self.resolve_path(ref).resolve()) for ref in refs if ref is not None}
        for ref, where in targets.values():
            ref.path = str(where) if root is None else os.path.relpath(where, root)
        spec.base_dir = root
        return spec


SPEC_KEYS = ("saesteer_spec", "name", "description", "model", "positions", "interventions", "condition")
INTERVENTION_KEYS = ("hook", "sae", "features", "vector", "op", "value")
EDIT_KEYS = ("feature", "id", "op", "value")
REF_KEYS = ("path", "sha256", "key")
CONDITION_KEYS = tuple(f.name for f in fields(ConditionSpec))


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}
    return names.get(type(value), f"{type(value).__name__} {value!r}")


def _mapping(d: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """`d` as a mapping whose keys are all in `allowed`; a misspelt key names the nearest valid one."""
    if not isinstance(d, dict):
        raise SaesteerError(f"{where} must be a mapping (YAML/JSON object), got {_kind(d)}")
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(allowed)}"
            raise SaesteerError(f"unknown key {key!r} in {where}; {hint}")
    return d


def _text(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SaesteerError(f"`{where}` must be a string, got {_kind(value)}")
    return value


def _hook(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SaesteerError(f"{where} needs `hook`: a module path like model.layers.12 or a layer index, "
                            f"got {_kind(value)}")
    return str(value)


def _index(value: Any, where: str) -> int:
    """A latent index: a whole number >= 0 (3.7 is refused rather than truncated)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SaesteerError(f"{where} must be a latent index (a whole number >= 0), got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SaesteerError(f"{where} must be a number, got {_kind(value)}")
    try:
        return float(value)
    except ValueError as e:
        raise SaesteerError(f"{where} must be a number, got {value!r}") from e


def _ref(d: Any, where: str) -> FileRef | None:
    if d is None:
        return None
    if isinstance(d, str):
        d = {"path": d}
    d = _mapping(d, where, REF_KEYS)
    path = d.get("path")
    if not isinstance(path, str) or not path:
        raise SaesteerError(f"{where} needs `path` (a file or folder, relative to the spec), got {_kind(path)}")
    for key in ("sha256", "key"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise SaesteerError(f"`{key}` in {where} must be a string, got {_kind(d[key])}")
    return FileRef(path=path, sha256=d.get("sha256"), key=d.get("key"))


def _intervention(d: Any, i: int) -> InterventionSpec:
    where = f"intervention {i}"
    d = _mapping(d, where, INTERVENTION_KEYS)
    hook = _hook(d.get("hook"), where)
    raw = d.get("features") or []
    if not isinstance(raw, list):
        raise SaesteerError(f"{where}: `features` must be a list like [{{feature: 12, op: clamp, value: 10}}], "
                            f"got {_kind(raw)}")
    features = []
    for j, f in enumerate(raw):
        if not isinstance(f, dict):
            raise SaesteerError(f"feature edits must be mappings like {{feature: 12, op: clamp, value: 10}}, got {f!r}")
        f = _mapping(f, f"{where}, feature edit {j}", EDIT_KEYS)
        op = _text(f.get("op", "clamp"), f"{where}, feature edit {j}: op")
        value = _number(f.get("value", 0.0), f"{where}, feature edit {j}: value")
        if "value" not in f and op not in ("ablate",):
            raise SaesteerError(f"{where}, feature edit {j}: {op} needs `value`")
        features.append(FeatureEdit(feature=_index(f.get("feature", f.get("id")), f"{where}, feature edit {j}: feature"),
                                    op=op, value=value))
    return InterventionSpec(hook=hook, sae=_ref(d.get("sae"), f"the sae of {where}"), features=features,
                            vector=_ref(d.get("vector"), f"the vector of {where}"),
                            op=_text(d.get("op", "add"), f"{where}: op"),
                            value=_number(d.get("value", 1.0), f"{where}: value"))


def _condition(d: Any) -> ConditionSpec:
    d = _mapping(d, "`condition`", CONDITION_KEYS)
    for key in ("detector", "threshold"):
        if key not in d:
            raise SaesteerError(f"`condition` needs `{key}`")
    calibration = d.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise SaesteerError(f"condition `calibration` must be a mapping, got {_kind(calibration)}")
    return ConditionSpec(detector=_text(d["detector"], "condition detector"), hook=_hook(d.get("hook"), "`condition`"),
                         threshold=_number(d["threshold"], "condition threshold"),
                         pooling=_text(d.get("pooling", "max"), "condition pooling"),
                         sae=_ref(d.get("sae"), "the sae of `condition`"),
                         feature=_index(d["feature"], "condition feature") if d.get("feature") is not None else None,
                         vector=_ref(d.get("vector"), "the vector of `condition`"),
                         bias=_number(d.get("bias", 0.0), "condition bias"),
                         direction=_text(d.get("direction", "above"), "condition direction"),
                         calibration=dict(calibration),
                         scope=_text(d.get("scope"), "condition scope", optional=True))


def sae_clamp_spec(sae_dir: str | Path, hook: str, edits: list[FeatureEdit], *, positions: str = "all",
                   sha256: str | None = None, name: str | None = None) -> SteeringSpec:
    """The paper's intervention (clamp latents at one hook), as a spec."""
    return SteeringSpec(interventions=[InterventionSpec(hook=hook, sae=FileRef(str(sae_dir), sha256), features=edits)],
                        positions=positions, name=name)
