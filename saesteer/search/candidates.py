"""The interventions a search tries, each written as an (ungated) steering spec.

- `sae_add`: CAA denoised through the SAE (`steer.sae_vectors`): the top-n refusal latents,
  each added with its code difference as weight, at a strength relative to CAA's norm.
- `sae_clamp`: discovery's best latents clamped on every token (the paper's method).
- `sae_ts`: SAE-targeted steering (`steer.sae_targeted`): the direction an effect approximator,
  fitted on steered answers read through the SAE, predicts will raise the same top-n refusal
  latents, less the generic effect of steering; at a strength relative to CAA's norm.
- `caa`: the dense baseline, contrastive activation addition at the SAE's layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.files import ensure_dir, read_json
from saesteer.models import ChatModel
from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, SteeringSpec
from saesteer.steer.directions import save_vectors
from saesteer.steer.sae_vectors import LatentContrast, denoised_edits

METHODS = ("sae_add", "sae_clamp", "sae_ts", "caa")
SAE_METHODS = ("sae_add", "sae_clamp", "sae_ts")


@dataclass
class Candidate:
    name: str
    method: str
    strength: float
    spec: SteeringSpec = field(repr=False)
    latents: list[int] = field(default_factory=list)

    @property
    def sae_based(self) -> bool:
        return self.method in SAE_METHODS

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "strength": self.strength, "latents": self.latents}


@dataclass
class Discovery:
    """What a search reads from a `saesteer discover` folder."""

    folder: Path
    sae_ref: FileRef
    hook: str
    features: list[dict[str, Any]]
    detector_prompts: frozenset[str] = frozenset()
    """Text hashes of the prompts discovery fitted its detectors on."""

    @classmethod
    def load(cls, folder: str | Path) -> Discovery:
        folder = Path(folder)
        data = read_json(folder / "features.json")
        sae = data.get("sae") if isinstance(data, dict) else None
        features = data.get("features") if isinstance(data, dict) else None
        if not (isinstance(sae, dict) and isinstance(sae.get("path"), str) and isinstance(sae.get("hook"), str)
                and isinstance(features, list)):
            raise SaesteerError(f"{folder / 'features.json'} is not a discovery result; rerun saesteer discover "
                                "into that folder")
        return cls(folder, FileRef(str((folder / sae["path"]).resolve()), sae.get("sha256")), sae["hook"], features,
                   frozenset(data.get("detector_prompts") or ()))

    def fitted_on(self, text: str) -> bool:
        from saesteer.discover import prompt_hash

        return prompt_hash(text) in self.detector_prompts

    def causal_features(self, n: int) -> list[dict[str, Any]]:
        """The best `n` latents that passed discovery's causal check (a clamp value that adds refusal)."""
        found = [f for f in self.features if isinstance(f.get("best_value"), (int, float))
                 and (f.get("best_harmful_gain") or 0) > 0][:n]
        if not found:
            raise SaesteerError(f"no latent in {self.folder} passed discovery's causal check (none added refusal "
                                "when clamped); search without sae_clamp (--methods sae_add,caa) or rerun discover "
                                "with more candidates")
        return found


@dataclass
class CandidateGrid:
    methods: tuple[str, ...] = METHODS
    strengths: tuple[float, ...] = (0.75, 1.0, 1.25)
    """sae_add, sae_ts and caa: multiples of the CAA vector's norm."""
    n_latents: tuple[int, ...] = (16, 32, 64)
    """sae_add and sae_ts: how many of the top refusal latents to add / target."""
    clamp_features: int = 2
    clamp_multipliers: tuple[float, ...] = (1.0,)
    ts_vectors: int = 256
    """sae_ts: probe vectors (SAE decoder rows) whose steered answers fit the effect approximator."""
    ts_prompts: int = 8
    """sae_ts: prompts (both labels, evenly spread over the contrast prompts) each probe vector answers."""
    ts_scale: float = 1.0
    """sae_ts: norm of the probe vectors, as a multiple of CAA's norm."""
    ts_new_tokens: int = 16

    def __post_init__(self) -> None:
        if self.ts_vectors < 8:
            raise SaesteerError(f"--ts-vectors must be at least 8 (the effect approximator is fitted on them), "
                                f"got {self.ts_vectors}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise SaesteerError(f"unknown search method(s) {', '.join(unknown) or '(none given)'}; "
                                f"use {', '.join(METHODS)}")


def build_candidates(lm: ChatModel, sae, discovery: Discovery, contrast: LatentContrast, grid: CandidateGrid,
                     out: Path, prompts: list[str] | None = None, say=print) -> list[Candidate]:
    """One ungated spec per grid point, saved under `out` (paths relative to it). `prompts`
    (chat prompts of both labels) are what sae_ts measures steering effects on."""
    out = ensure_dir(out)
    model = {"id": lm.model_id, "revision": lm.revision}
    found: list[Candidate] = []
    if "sae_add" in grid.methods:
        for n in grid.n_latents:
            for s in grid.strengths:
                edits = denoised_edits(contrast, sae, n, s)
                spec = SteeringSpec([InterventionSpec(hook=discovery.hook, sae=discovery.sae_ref, features=edits)],
                                    name=f"sae_add-{n}-{s:g}", model=model,
                                    description=f"CAA denoised through the SAE: its top {len(edits)} refusal "
                                                f"latents added, {s:g}x CAA's norm")
                found.append(Candidate(spec.name, "sae_add", s, spec, [e.feature for e in edits]))
    if "sae_clamp" in grid.methods:
        for f in discovery.causal_features(grid.clamp_features):
            for m in grid.clamp_multipliers:
                value = round(float(f["best_value"]) * m, 3)
                spec = SteeringSpec([InterventionSpec(hook=discovery.hook, sae=discovery.sae_ref,
                                                      features=[FeatureEdit(int(f["feature"]), "clamp", value)])],
                                    name=f"sae_clamp-{f['feature']}-{value:g}", model=model)
                found.append(Candidate(spec.name, "sae_clamp", value, spec, [int(f["feature"])]))
    if "sae_ts" in grid.methods:
        found += _sae_ts_candidates(lm, sae, discovery, contrast, grid, out, prompts or [], model, say)
    if "caa" in grid.methods:
        vectors = out / "caa.safetensors"
        if not vectors.exists():
            save_vectors(vectors, {"caa": contrast.caa}, {"hook": discovery.hook})
        for s in grid.strengths:
            spec = SteeringSpec([InterventionSpec(hook=discovery.hook, vector=FileRef(str(vectors.resolve()), key="caa"),
                                                  op="add", value=s)], name=f"caa-{s:g}", model=model)
            found.append(Candidate(spec.name, "caa", s, spec))
    for c in found:
        c.spec = c.spec.with_paths(out)
        c.spec.save(out / f"{c.name}.yaml")
    return found


def _sae_ts_candidates(lm: ChatModel, sae, discovery: Discovery, contrast: LatentContrast, grid: CandidateGrid,
                       out: Path, prompts: list[str], model: dict, say) -> list[Candidate]:
    from saesteer.steer.sae_targeted import EffectApproximator, fit_approximator

    if not prompts:
        raise SaesteerError("sae_ts needs prompts to measure steering effects on")
    step = max(1, len(prompts) // grid.ts_prompts)
    prompts = prompts[::step][:grid.ts_prompts]
    caa_norm = float(contrast.caa.norm())
    path = out / f"sae_ts_approximator_{grid.ts_vectors}.safetensors"
    approx = EffectApproximator.load(path) if path.exists() else fit_approximator(
        lm, sae, discovery.hook, prompts, n_vectors=grid.ts_vectors, scale=caa_norm * grid.ts_scale, path=path,
        max_new_tokens=grid.ts_new_tokens, say=say)
    file = out / "sae_ts.safetensors"
    vectors, found = {}, []
    for n in grid.n_latents:
        latents = contrast.top_latents(n)
        if not latents:
            raise SaesteerError("no SAE latent fires more on refusal replies than on compliance replies; "
                                "sae_ts has nothing to target")
        target = torch.zeros_like(contrast.difference)
        target[latents] = contrast.difference[latents]
        vectors[f"sae_ts_{n}"] = approx.targeted(target) * caa_norm
        for s in grid.strengths:
            add = InterventionSpec(hook=discovery.hook, vector=FileRef(str(file.resolve()), key=f"sae_ts_{n}"),
                                   op="add", value=s)
            spec = SteeringSpec([add], name=f"sae_ts-{n}-{s:g}", model=model,
                                description=f"SAE-targeted steering: the direction predicted to raise the top "
                                            f"{len(latents)} refusal latents (effect approximator held-out R² "
                                            f"{approx.r2_heldout:.2f}), {s:g}x CAA's norm")
            found.append(Candidate(spec.name, "sae_ts", s, spec, latents))
    save_vectors(file, vectors, {"hook": discovery.hook, "r2_heldout": f"{approx.r2_heldout:.4f}"})
    return found
