"""SAE-targeted steering (SAE-TS; Chalnev, Siu & Conmy 2024, arXiv 2411.02193).

A steering vector's *effect* is read through the SAE: answer prompts with the vector added at
the hook, read those answers again unsteered, and average each latent's code over the answer
tokens; the effect is that mean minus the same mean for unsteered answers. A linear map fitted
on many probe vectors of one norm (the effect approximator: effect ≈ ŝ·W + b for a unit ŝ)
predicts the effect of any direction. The targeted vector for latents with weights t is the
direction of W·t less that of W·b, the effect every vector of this norm has whatever its
direction (the paper's "single step" solution). It aims at the target latents' *downstream*
effect on what the model writes, where adding their decoder rows (`sae_vectors`) only sets
their codes at the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.files import atomic_path
from saesteer.generate import GenerationConfig, encode_prompt, forward_info, generate
from saesteer.hooks import forward_hooks, hook_point, output_tensor, replace_output
from saesteer.models import ChatModel
from saesteer.steer.directions import mean_residuals_of_ids


@dataclass
class EffectApproximator:
    """effect(s) ≈ (s / |s|) · weight + bias, for vectors of norm `scale` added at one hook."""

    weight: torch.Tensor
    """[d_model, d_sae]"""
    bias: torch.Tensor
    """[d_sae]"""
    scale: float
    """Norm of the probe vectors whose effects were measured."""
    r2_heldout: float
    """Share of the held-out probe vectors' effect variance the map predicts (over all latents)."""

    def predict(self, vectors: torch.Tensor) -> torch.Tensor:
        unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return unit @ self.weight + self.bias

    def targeted(self, target: torch.Tensor, *, bias_scale: float = 1.0) -> torch.Tensor:
        """Unit vector that raises the latents weighted by `target` ([d_sae], ≥ 0) with the
        generic effect of steering at this norm taken out."""
        if not bool((target > 0).any()):
            raise SaesteerError("SAE-TS needs at least one target latent with a positive weight")
        aim = self.weight @ target.to(self.weight)
        if float(aim.norm()) == 0.0:
            raise SaesteerError("the effect approximator predicts no effect on the target latents (its probe "
                                "vectors changed nothing the SAE reads); measure at a larger scale or on more vectors")
        direction = _unit(aim) - bias_scale * _unit(self.weight @ self.bias)
        if float(direction.norm()) < 1e-6:
            raise SaesteerError("the targeted direction is the generic effect of steering itself; lower bias_scale")
        return _unit(direction)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(tmp),
                      metadata={"scale": repr(self.scale), "r2_heldout": repr(self.r2_heldout)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EffectApproximator:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            return cls(tensors["weight"], tensors["bias"], float(meta["scale"]), float(meta["r2_heldout"]))
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise SaesteerError(f"{path} is not an SAE-TS effect approximator ({e}); delete it and refit") from e


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def probe_vectors(sae, n: int, *, seed: int = 0) -> torch.Tensor:
    """`n` unit probe directions: distinct SAE decoder rows, chosen at random (as in SAE-TS)."""
    rows = sae.W_dec.detach().float().cpu()
    if n < 2 or n > rows.shape[0]:
        raise SaesteerError(f"SAE-TS needs between 2 and {rows.shape[0]} probe vectors (the SAE's latents), got {n}")
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return rows[pick] / rows[pick].norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.inference_mode()
def measure_effects(lm: ChatModel, sae, hook: str | int, vectors: torch.Tensor, prompts: Sequence[str], *,
                    scale: float, max_new_tokens: int = 16, batch_size: int = 32,
                    baseline: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Effects of adding `scale` × each unit vector at `hook` on every token: the mean SAE code
    over the answers' tokens, read unsteered, minus that of unsteered answers ([n, d_sae]).
    Also returns the unsteered mean code (pass it back as `baseline` to skip recomputing it)."""
    point = hook_point(lm.model, hook)
    if vectors.ndim != 2 or vectors.shape[1] != lm.d_model:
        raise SaesteerError(f"probe vectors must be [n, {lm.d_model}] for this model, got {list(vectors.shape)}")
    n_prompts = len(prompts)
    rows = [p for _ in range(len(vectors) + (baseline is None)) for p in prompts]
    adds = torch.cat([vectors.float() * scale] + ([torch.zeros(1, lm.d_model)] if baseline is None else []))
    per_row = adds.repeat_interleave(n_prompts, dim=0).to(lm.device, lm.model.dtype)

    def add_vector(_module, _args, output):
        info = forward_info()
        h = output_tensor(output)
        return replace_output(output, h + per_row[info.rows][:, None, :]) if info is not None else output

    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    with forward_hooks([(point.module, add_vector)]):
        answers = generate(lm, rows, config)
    read = []
    for prompt, answer in zip(rows, answers):        # the answer's own tokens, not its re-tokenised text
        ids, new = encode_prompt(lm, prompt), answer.token_ids
        read.append((ids + new, [False] * len(ids) + [True] * len(new)) if new
                    else (ids, [False] * (len(ids) - 1) + [True]))   # an empty answer: its last prompt token
    codes = mean_residuals_of_ids(lm, read, [point.layer], batch_size=batch_size,
                                  transform=lambda h: sae.encode(h.to(sae.W_dec.device, sae.W_dec.dtype)))[point.layer]
    per_vector = codes.view(-1, n_prompts, codes.shape[-1]).mean(1)
    if baseline is None:
        baseline, per_vector = per_vector[-1], per_vector[:-1]
    return per_vector - baseline, baseline


def collect_effects(lm: ChatModel, sae, hook: str | int, vectors: torch.Tensor, prompts: Sequence[str], *,
                    scale: float, path: str | Path, chunk: int = 16, max_new_tokens: int = 16,
                    batch_size: int = 32, progress: bool | str = False) -> torch.Tensor:
    """`measure_effects` for every vector, `chunk` at a time, saved to `path` after each chunk;
    a rerun with the same vectors continues where the last one stopped."""
    path = Path(path)
    try:
        done = load_file(str(path)) if path.exists() else {}
    except (SafetensorError, OSError) as e:
        raise SaesteerError(f"{path} is not a file of SAE-TS effects ({e}); delete it to remeasure") from e
    if done and not (torch.equal(done["vectors"], vectors[:len(done["vectors"])]) and float(done["scale"]) == scale):
        raise SaesteerError(f"{path} holds effects of other probe vectors or another scale; delete it to remeasure")
    effects = list(done.get("effects", torch.empty(0, 0)).unbind(0)) if done else []
    baseline = done.get("baseline")
    bar = tqdm(total=len(vectors), initial=len(effects), unit="vector", disable=not progress,
               desc=progress if isinstance(progress, str) else "SAE-TS effects", leave=False)
    for start in range(len(effects), len(vectors), chunk):
        part, baseline = measure_effects(lm, sae, hook, vectors[start:start + chunk], prompts, scale=scale,
                                         max_new_tokens=max_new_tokens, batch_size=batch_size, baseline=baseline)
        effects += list(part.unbind(0))
        with atomic_path(path) as tmp:
            save_file({"vectors": vectors[:len(effects)].contiguous(), "effects": torch.stack(effects).contiguous(),
                       "baseline": baseline.contiguous(), "scale": torch.tensor(scale)}, str(tmp))
        bar.update(len(part))
    bar.close()
    return torch.stack(effects)


def fit_effects(vectors: torch.Tensor, effects: torch.Tensor, *, scale: float, ridge: float = 1e-2,
                heldout: float = 0.2, seed: int = 0) -> EffectApproximator:
    """Ridge regression of effects on unit vectors, with an intercept; reports the held-out R²
    and then refits on every vector."""
    n = len(vectors)
    if n < 5:
        raise SaesteerError(f"fitting an effect approximator needs at least 5 measured vectors, got {n}")
    x = vectors.double() / vectors.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = effects.double()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(n * heldout))
    val, train = order[:n_val], order[n_val:]
    w, b = _ridge(x[train], y[train], ridge)
    resid = y[val] - (x[val] @ w + b)
    total = y[val] - y[train].mean(0)
    variance = float((total ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / variance if variance > 0 else 0.0   # no effect: nothing explained
    w, b = _ridge(x, y, ridge)
    return EffectApproximator(w.float(), b.float(), float(scale), r2)


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    return w, y_mean - x_mean @ w


def fit_approximator(lm: ChatModel, sae, hook: str | int, prompts: Sequence[str], *, n_vectors: int, scale: float,
                     path: str | Path, max_new_tokens: int = 16, seed: int = 0,
                     say: Callable[[str], None] | None = None) -> EffectApproximator:
    """Measure (resumably) and fit the effect approximator for `hook`; `path` keeps the
    measured effects beside it (`path` with `.effects` before the suffix)."""
    path = Path(path)
    effects_path = path.with_suffix(".effects" + path.suffix)
    vectors = probe_vectors(sae, n_vectors, seed=seed)
    effects = collect_effects(lm, sae, hook, vectors, prompts, scale=scale, path=effects_path,
                              max_new_tokens=max_new_tokens, progress="SAE-TS effects")
    approx = fit_effects(vectors, effects, scale=scale, seed=seed)
    approx.save(path)
    if say:
        say(f"[sae_ts] effect approximator on {n_vectors} probe vectors: held-out R² {approx.r2_heldout:.2f}")
    return approx
