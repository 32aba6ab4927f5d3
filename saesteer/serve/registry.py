"""Named steering for a deployment: registered specs, registered SAEs, and request-level steering.

Model names a client may ask for (all listed by `GET /v1/models`):

    smollm2               the deployment default: the `--steer` spec if one was given, else unsteered
    smollm2:unsteered     never steered
    smollm2:steered       the `--steer` spec
    smollm2:NAME          a spec registered with `--register NAME=SPEC`

A request may also carry its own `steering` (the OpenAI clients send it with `extra_body`):
the name of a registered spec, `"none"`, or an object that scales a registered spec
(`{"spec": NAME, "strength": 0.5}`) or edits latents of a registered SAE
(`{"sae": NAME, "features": [{"feature": 12, "op": "clamp", "value": 8}]}`). Request-level
steering never names a file: SAEs are referred to by their registered names only, so a request
cannot make the server read (or write) anything on disk.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.models import ChatModel
from saesteer.serve.schemas import MAX_ABS_VALUE, SteeringIn
from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, Steering, SteeringSpec
from saesteer.steer.spec import ConditionSpec

UNSTEERED = "unsteered"
STEERED = "steered"
NO_STEERING = ("none", UNSTEERED)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"/;,()]+/)+[^\s'\";,()]*")


class LookupFailed(SaesteerError):
    """A name (model, spec or SAE) that the registry does not know: HTTP 404."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class InvalidSteering(SaesteerError):
    """A request's steering object is well-formed JSON but not usable: HTTP 422."""


@dataclass
class RegisteredSAE:
    name: str
    path: Path
    hook: str | None
    """Hook point the SAE reads (from its metadata or the spec that uses it)."""
    d_sae: int
    sha256: str | None = None


@dataclass
class Resolved:
    """What one request is steered with: None for unsteered."""

    steering: Steering | None
    label: str
    """Human-readable origin: a model name, `request` or `unsteered`."""

    @property
    def key(self) -> str | None:
        return self.steering.hash if self.steering is not None else None


# --- the registry ---------------------------------------------------------------------------

@dataclass
class Registry:
    """Every steering a deployment offers, resolved once against the loaded model."""

    lm: ChatModel
    model_name: str
    specs: dict[str, Steering] = field(default_factory=dict)
    """Registered specs by short name (`steered` is the deployment spec)."""
    saes: dict[str, RegisteredSAE] = field(default_factory=dict)
    default: str | None = None
    """Spec name that the bare model name uses (None: unsteered)."""
    cache_size: int = 32
    _cache: OrderedDict[str, Steering] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, lm: ChatModel, *, model_name: str | None = None, deployment: SteeringSpec | None = None,
              specs: dict[str, SteeringSpec] | None = None, saes: dict[str, str | Path] | None = None,
              cache_size: int = 32) -> Registry:
        """Resolve every spec and SAE now, so a bad file stops the server before it listens."""
        name = model_name or default_model_name(lm.name)
        if ":" in name or not name:
            raise SaesteerError(f"served model name {name!r} must be non-empty and contain no ':'")
        reg = cls(lm=lm, model_name=name, cache_size=cache_size)
        named = dict(specs or {})
        if deployment is not None:
            if STEERED in named:
                raise SaesteerError(f"the name {STEERED!r} is taken by the deployment spec (--steer)")
            named = {STEERED: deployment, **named}
            reg.default = STEERED
        for spec_name, spec in named.items():
            _check_name(spec_name, "spec")
            if spec_name in NO_STEERING:
                raise SaesteerError(f"{spec_name!r} is reserved for the unsteered model; choose another name")
            reg.specs[spec_name] = Steering(lm, spec)
            for iv in spec.interventions:
                if iv.sae is not None:
                    reg._add_sae(None, spec.resolve_path(iv.sae), iv.hook, iv.sae.sha256)
            if spec.condition is not None and spec.condition.sae is not None:
                reg._add_sae(None, spec.resolve_path(spec.condition.sae), spec.condition.hook,
                             spec.condition.sae.sha256)
        for sae_name, path in (saes or {}).items():
            _check_name(sae_name, "SAE")
            reg._add_sae(sae_name, Path(path), None, None)
        return reg

    def _add_sae(self, name: str | None, path: Path, hook: str | None, sha256: str | None) -> None:
        from saesteer.sae import load_sae
        from saesteer.steer.engine import check_sae_fits

        path = path.expanduser().resolve()
        for entry in self.saes.values():
            if entry.path == path:
                if name is not None and name != entry.name:
                    raise SaesteerError(f"SAE {path} is registered twice ({entry.name!r} and {name!r})")
                entry.hook = entry.hook or hook
                return
        if not path.exists():
            raise SaesteerError(f"SAE {path} not found")
        sae = load_sae(path)
        check_sae_fits(sae, self.lm, None, path)  # a wrong SAE stops the server now, not each request naming it
        meta = sae.metadata or {}
        if hook is None:
            hook = meta.get("hf_hook_name") or (str(meta["layer"]) if meta.get("layer") is not None else None)
        if name is None:
            base = path.name if path.is_dir() else path.stem
            name, i = base, 2
            while name in self.saes:
                name, i = f"{base}-{i}", i + 1
        elif name in self.saes:
            raise SaesteerError(f"SAE name {name!r} is registered twice")
        self.saes[name] = RegisteredSAE(name=name, path=path, hook=hook, d_sae=int(sae.d_sae), sha256=sha256)

    # --- names ----------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        ids = [self.model_name, f"{self.model_name}:{UNSTEERED}"]
        return ids + [f"{self.model_name}:{n}" for n in self.specs]

    def _spec_named(self, name: str) -> str | None:
        """Short spec name for `NAME` or `MODEL:NAME`; None for the unsteered names."""
        short = name.split(":", 1)[1] if name.startswith(self.model_name + ":") else name
        if short in NO_STEERING:
            return None
        if short not in self.specs:
            known = ", ".join(self.specs) or "none registered"
            raise LookupFailed(f"unknown steering spec {short!r}; registered specs: {known}", "spec_not_found")
        return short

    def resolve_model(self, model: str) -> Resolved:
        """The steering a model name stands for (404 for names this server does not serve)."""
        if model == self.model_name:
            name = self.default
        elif model.startswith(self.model_name + ":"):
            try:
                name = self._spec_named(model)
            except LookupFailed as e:
                raise LookupFailed(f"unknown model {model!r}; this server serves: {', '.join(self.model_ids())}",
                                   "model_not_found") from e
        else:
            raise LookupFailed(f"unknown model {model!r}; this server serves: {', '.join(self.model_ids())}",
                               "model_not_found")
        if name is None:
            return Resolved(None, f"{self.model_name}:{UNSTEERED}")
        return Resolved(self.specs[name], f"{self.model_name}:{name}")

    def resolve_request(self, steering: Any) -> Resolved:
        """Request-level `steering` (already type-checked): a spec name or a `SteeringIn`."""
        if isinstance(steering, str):
            name = self._spec_named(steering)
            if name is None:
                return Resolved(None, f"{self.model_name}:{UNSTEERED}")
            return Resolved(self.specs[name], f"{self.model_name}:{name}")
        if not isinstance(steering, SteeringIn):  # pragma: no cover - the API validates first
            raise InvalidSteering("steering must be a registered spec name or an object")
        try:
            spec = self.request_spec(steering)
        except (InvalidSteering, LookupFailed):
            raise
        except SaesteerError as e:  # e.g. value x strength beyond what a spec accepts: HTTP 422, not 500
            raise InvalidSteering(str(e)) from e
        return Resolved(self._steering_for(spec), "request")

    def request_spec(self, s: SteeringIn) -> SteeringSpec:
        """A `SteeringSpec` built only from registered parts (no path in the request is ever read)."""
        if (s.spec is None) == (s.sae is None):
            raise InvalidSteering("steering needs exactly one of `spec` (a registered spec) or `sae` "
                                  "(a registered SAE with `features`)")
        if s.spec is not None:
            if s.features or s.hook is not None or s.condition is not None:
                raise InvalidSteering("`features`, `hook` and `condition` go with `sae`, not with `spec`")
            name = self._spec_named(s.spec)
            if name is None:
                raise InvalidSteering(f"{s.spec!r} is the unsteered model; send \"steering\": \"none\" instead")
            base = self.specs[name].spec
            for iv in base.interventions:
                for value in [f.value for f in iv.features] + ([iv.value] if iv.sae is None else []):
                    _check_scaled(value, s.strength, f"a value ({value:g}) of spec {name!r}")
            spec = scale_spec(base, s.strength)
            if s.positions is not None:
                spec = dataclasses.replace(spec, positions=s.positions)
            return spec
        sae = self._sae_named(s.sae)
        if not s.features:
            raise InvalidSteering("steering with `sae` needs `features`, e.g. [{\"feature\": 12, \"op\": \"clamp\", "
                                  "\"value\": 8}]")
        hook = str(s.hook) if s.hook is not None else sae.hook
        if hook is None:
            raise InvalidSteering(f"SAE {sae.name!r} does not record its hook point; give `hook` (a layer index)")
        for f in s.features:
            if f.feature >= sae.d_sae:
                raise InvalidSteering(f"feature {f.feature} is out of range: SAE {sae.name!r} has {sae.d_sae} latents")
        for f in s.features:
            _check_scaled(f.value, s.strength, f"feature {f.feature}'s value ({f.value:g})")
        edits = [FeatureEdit(f.feature, f.op, float(f.value) * s.strength) for f in s.features]
        condition = None
        if s.condition is not None:
            c = s.condition
            csae = self._sae_named(c.sae) if c.sae is not None else sae
            if c.feature >= csae.d_sae:
                raise InvalidSteering(f"condition feature {c.feature} is out of range: SAE {csae.name!r} "
                                      f"has {csae.d_sae} latents")
            chook = str(c.hook) if c.hook is not None else csae.hook
            if chook is None:
                raise InvalidSteering(f"SAE {csae.name!r} does not record its hook point; give condition `hook`")
            condition = ConditionSpec(detector="sae_feature", hook=chook, threshold=float(c.threshold),
                                      pooling=c.pooling, sae=FileRef(str(csae.path), csae.sha256),
                                      feature=c.feature, direction=c.direction)
        return SteeringSpec(interventions=[InterventionSpec(hook=hook, sae=FileRef(str(sae.path), sae.sha256),
                                                            features=edits)],
                            positions=s.positions or "all", condition=condition, name="request")

    def _sae_named(self, name: str) -> RegisteredSAE:
        if name not in self.saes:
            known = ", ".join(self.saes) or "none registered"
            raise LookupFailed(f"unknown SAE {name!r}; request steering may only name registered SAEs: {known}",
                               "sae_not_found")
        return self.saes[name]

    def _steering_for(self, spec: SteeringSpec) -> Steering:
        """Resolved steering for a request spec, cached by content hash (LRU)."""
        key = spec.hash()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            steering = Steering(self.lm, spec, check_model=False)
        except SaesteerError as e:
            raise InvalidSteering(self.redact(str(e))) from e
        with self._lock:
            self._cache[key] = steering
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return steering

    def redact(self, text: str) -> str:
        """`text` without file paths, for a client: a registered SAE's path becomes its name, any
        other absolute path `<path>` (a server never shows its file system)."""
        for name, sae in sorted(self.saes.items(), key=lambda item: -len(str(item[1].path))):
            text = text.replace(str(sae.path), repr(name))
        return _ABSOLUTE_PATH.sub("<path>", text)

    def describe(self) -> dict[str, Any]:
        """What the page and `GET /v1/saesteer/info` show."""
        specs = {}
        for name, st in self.specs.items():
            specs[name] = {"model": f"{self.model_name}:{name}", "hash": st.hash, "name": st.spec.name,
                           "description": st.spec.description, "positions": st.spec.positions,
                           "conditional": st.gate is not None, "interventions": summarize(st.spec, self.saes)}
        return {"model": self.model_name, "default": self.default, "models": self.model_ids(), "specs": specs,
                "saes": {n: {"hook": s.hook, "d_sae": s.d_sae} for n, s in self.saes.items()}}


def summarize(spec: SteeringSpec, saes: dict[str, RegisteredSAE]) -> list[dict[str, Any]]:
    """Interventions with SAEs named by their registered names (paths stay on the server)."""
    by_path = {str(s.path): n for n, s in saes.items()}
    out = []
    for iv in spec.interventions:
        if iv.sae is not None:
            path = str(spec.resolve_path(iv.sae).expanduser().resolve())
            out.append({"hook": iv.hook, "sae": by_path.get(path),
                        "features": [{"feature": f.feature, "op": f.op, "value": f.value} for f in iv.features]})
        else:
            out.append({"hook": iv.hook, "vector": True, "op": iv.op, "value": iv.value})
    return out


def _check_scaled(value: float, strength: float, what: str) -> None:
    """The edit a request makes is value x strength: refuse it over the cap (a registered spec's
    own value stands at strength 1 even if it is larger)."""
    scaled = abs(value * strength)
    if scaled > max(MAX_ABS_VALUE, abs(value)):
        raise InvalidSteering(f"{what} x strength ({strength:g}) = {scaled:g}, over the limit of "
                              f"{MAX_ABS_VALUE:g}; lower the strength or the value")


def scale_spec(spec: SteeringSpec, strength: float) -> SteeringSpec:
    """The same spec with every intervention value multiplied by `strength`."""
    if strength == 1.0:
        return spec
    ivs = [dataclasses.replace(iv, features=[FeatureEdit(f.feature, f.op, f.value * strength) for f in iv.features],
                               value=iv.value * strength) for iv in spec.interventions]
    return dataclasses.replace(spec, interventions=ivs)


def default_model_name(name: str) -> str:
    """The served name of a model: its alias, or the last part of a path or hub id."""
    path = Path(name)
    return (path.stem if path.suffix == ".gguf" else path.name) or name


def _check_name(name: str, what: str) -> None:
    if not name or ":" in name or "/" in name or any(c.isspace() for c in name):
        raise SaesteerError(f"{what} name {name!r} must be non-empty, without ':', '/' or spaces")


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    """`["a=x", "b=y"]` → {"a": "x", "b": "y"} (for --register NAME=SPEC)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SaesteerError(f"{option} expects NAME=PATH, got {item!r}")
        if name in out:
            raise SaesteerError(f"{option} {name} is given twice")
        out[name] = value
    return out
