"""Turn a steering spec into hooks on a loaded model: `with steer(lm, spec): generate(...)`.

Everything that can be wrong with a spec (hook, SAE width, feature id, file hash, model) is
checked when the spec is resolved, before any generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saesteer.errors import SaesteerError
from saesteer.generate import forward_info
from saesteer.hooks import HookPoint, hook_point
from saesteer.models import ChatModel
from saesteer.steer.conditions import (Condition, ConditionGate, DirectionDetector, ProbeDetector,
                                       SAEFeatureDetector, SAEProbeDetector)
from saesteer.steer.interventions import (DirectionIntervention, Intervention, RowGate, SAEFeatureIntervention,
                                          apply_interventions)
from saesteer.steer.spec import FileRef, SteeringSpec


@lru_cache(maxsize=8)
def _load_sae_cached(path: str, mtime: float) -> Any:
    from saesteer.sae import load_sae

    return load_sae(path)


def load_sae_ref(spec: SteeringSpec, ref: FileRef, lm: ChatModel, point: HookPoint) -> Any:
    """Load (cached) and check an SAE against the model and the hook it is used at."""
    path = spec.resolve_path(ref)
    if not path.exists():
        raise _not_found("SAE", path, spec, ref)
    weights = path / "sae_weights.safetensors" if path.is_dir() else path
    sae = _load_sae_cached(str(path), weights.stat().st_mtime if weights.exists() else 0.0)
    if ref.sha256 and not sae.content_hash().startswith(ref.sha256):
        raise SaesteerError(f"SAE {path} has changed since the spec was written "
                            f"(sha256 {sae.content_hash()[:16]} vs {ref.sha256[:16]}); regenerate the spec")
    check_sae_fits(sae, lm, point, path)
    return sae.to(lm.device)


def _not_found(kind: str, path: Path, spec: SteeringSpec, ref: FileRef) -> SaesteerError:
    """A missing file of a spec; a relative path is read from the spec's own folder, which a copied
    spec leaves behind."""
    if Path(ref.path).expanduser().is_absolute() or spec.base_dir is None:
        return SaesteerError(f"{kind} {path} not found")
    return SaesteerError(f"{kind} {path} not found: the spec names it as {ref.path!r}, relative to the spec's "
                         f"folder {spec.base_dir.resolve()}; keep the spec beside its files, or write the path "
                         "from there or as an absolute path")


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()  # one local folder, named two ways
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_sae_fits(sae: Any, lm: ChatModel, point: HookPoint | None, path: str | Path) -> None:
    """The SAE reads this model's width, at this hook's layer, and was trained on this model."""
    if sae.d_in != lm.d_model:
        raise SaesteerError(f"SAE {path} reads {sae.d_in}-wide activations but {lm.name} has d_model {lm.d_model}; "
                            "it was trained for another model")
    meta = sae.metadata or {}
    sae_layer = meta.get("layer")
    if point is not None and sae_layer is not None and sae_layer != point.layer:
        raise SaesteerError(f"SAE {path} was trained at layer {sae_layer} but is used at {point.name}; "
                            f"use hook model.layers.{sae_layer}")
    sae_model = meta.get("model_id")
    if sae_model and lm.model_id and not _same_model(sae_model, lm.model_id) and not lm.model_id.startswith("tiny-random"):
        raise SaesteerError(f"SAE {path} was trained on {sae_model} but the model is {lm.model_id}; "
                            "use that model or an SAE trained on this one")


def load_vector(spec: SteeringSpec, ref: FileRef, d_model: int, width: str = "the model's d_model") -> torch.Tensor:
    path = spec.resolve_path(ref)
    if not path.is_file():
        raise _not_found("vector file", path, spec, ref)
    if ref.sha256:
        from saesteer.files import sha256_file

        if not sha256_file(path).startswith(ref.sha256):
            raise SaesteerError(f"vector file {path} has changed since the spec was written; regenerate the spec")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SaesteerError(f"vector file {path} is corrupt ({e})") from e
    key = ref.key or (next(iter(tensors)) if len(tensors) == 1 else None)
    if key not in tensors:
        raise SaesteerError(f"vector file {path} has no tensor {ref.key!r}; it holds {', '.join(tensors)}")
    vec = tensors[key].float().reshape(-1)
    if vec.numel() != d_model:
        raise SaesteerError(f"vector {key} in {path} has {vec.numel()} dims but {width} is {d_model}")
    return vec


class Steering:
    """A spec resolved against one model: hook points, loaded SAEs/vectors and the condition."""

    def __init__(self, lm: ChatModel, spec: SteeringSpec | str | Path | dict, *, check_model: bool = True):
        if isinstance(spec, (str, Path)):
            spec = SteeringSpec.load(spec)
        elif isinstance(spec, dict):
            spec = SteeringSpec.from_dict(spec)
        self.lm, self.spec = lm, spec
        spec_model = spec.model.get("id")
        if check_model and spec_model and spec_model != lm.model_id:
            raise SaesteerError(f"steering spec was made for {spec_model} but the model is {lm.model_id}")
        grouped: dict[str, tuple[HookPoint, list[Intervention]]] = {}
        for iv in spec.interventions:
            point = hook_point(lm.model, iv.hook)
            if iv.sae is not None:
                intervention: Intervention = SAEFeatureIntervention(load_sae_ref(spec, iv.sae, lm, point), iv.features)
            else:
                intervention = DirectionIntervention(load_vector(spec, iv.vector, lm.d_model), iv.op, iv.value)
            grouped.setdefault(point.name, (point, []))[1].append(intervention)
        self.groups = list(grouped.values())
        self.gate: ConditionGate | None = None
        if spec.condition is not None:
            c = spec.condition
            point = hook_point(lm.model, c.hook)
            if c.detector == "sae_feature":
                detector = SAEFeatureDetector(load_sae_ref(spec, c.sae, lm, point), int(c.feature))
            elif c.detector == "sae_probe":
                sae = load_sae_ref(spec, c.sae, lm, point)
                detector = SAEProbeDetector(sae, load_vector(spec, c.vector, sae.d_sae, "the SAE's latent count"), c.bias)
            elif c.detector == "probe":
                detector = ProbeDetector(load_vector(spec, c.vector, lm.d_model), c.bias)
            else:
                detector = DirectionDetector(load_vector(spec, c.vector, lm.d_model))
            self.gate = ConditionGate(Condition(point, detector, c.threshold, c.pooling, c.direction,  # type: ignore[arg-type]
                                                c.scope or "prompt"))  # type: ignore[arg-type]

    @property
    def hash(self) -> str:
        return self.spec.hash()

    @contextlib.contextmanager
    def active(self, rows: Collection[int] | None = None) -> Iterator[Steering]:
        """Register the hooks for the duration of the block (always removed afterwards).

        `rows`: steer only these rows of a `generate` call (indices into its prompts), so specs
        that share a batch each steer their own rows (`RowSteering`)."""
        if rows is not None and self.gate is not None:
            raise SaesteerError("a conditional spec decides its rows itself; it cannot be limited to given rows")
        gate = RowSubset(rows) if rows is not None else self.gate
        with contextlib.ExitStack() as stack:
            if self.gate is not None:
                point = self.gate.condition.point
                if point.layer <= min(p.layer for p, _ in self.groups):
                    # The detector reads its layer before any steered layer: decide in the same pass.
                    handle = point.module.register_forward_hook(self.gate.detect_hook())
                else:
                    handle = self.lm.model.register_forward_pre_hook(self.gate.prepass_hook(self.lm.model),
                                                                     with_kwargs=True)
                stack.callback(handle.remove)
            stack.enter_context(apply_interventions(self.groups, self.spec.positions, gate))  # type: ignore[arg-type]
            yield self


class RowSubset(RowGate):
    """Steer only the rows whose index in the `generate` call is in `rows`."""

    def __init__(self, rows: Collection[int]):
        self.rows = torch.tensor(sorted(rows), dtype=torch.long)

    def rows_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        info = forward_info()
        if info is None:
            raise SaesteerError("steering limited to given rows works only inside saesteer's generate")
        return torch.isin(info.rows, self.rows.to(info.rows.device)).to(device)


@dataclass
class RowSteering:
    """Several unconditional specs in one batch, each steering its own rows; rows of no spec are
    left unsteered. A greedy answer does not depend on its batch, so each row's answer is the one
    its spec gives alone, and one batch of many specs fills the matrix units better than many
    small ones (the search answers all its candidates this way)."""

    parts: list[tuple[Steering, Collection[int]]]
    gate: None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[RowSteering]:
        with contextlib.ExitStack() as stack:
            for steering, rows in self.parts:
                stack.enter_context(steering.active(rows=rows))
            yield self


def steer(lm: ChatModel, spec: SteeringSpec | str | Path | dict | None, **kwargs: Any):
    """Context manager: the model is steered by `spec` inside the block (`None`: unsteered)."""
    if spec is None:
        return contextlib.nullcontext(None)
    return Steering(lm, spec, **kwargs).active()
