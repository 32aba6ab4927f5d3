"""Train a Top-k SAE: Adam with warm-up, unit-norm decoder, AuxK, checkpoints, DDP.

One optimiser step reads `batch_tokens` activations (split over ranks under torchrun), so
`loss = FVU + auxk_coef * AuxK` where FVU = ||x - x_hat||^2 / ||x - mean(x)||^2 over the batch.
Checkpoints (weights, Adam state, step = data position, dead-latent counters, RNG) are written
atomically every `checkpoint_every` steps; `resume=True` continues from the last one and ends
where an uninterrupted run would.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError, at_least
from saesteer.files import atomic_path, ensure_dir, write_json
from saesteer.sae.config import TrainConfig, lr_factor
from saesteer.sae.formats import save_sae
from saesteer.sae.kernels import all_threads, few_threads, sparse_decode, topk_autoencode
from saesteer.sae.topk import TopKSAE

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


class Source(Protocol):
    d_model: int
    train_tokens: int | None

    def identity(self) -> dict[str, Any]: ...
    def metadata(self) -> dict[str, Any]: ...
    def batches(self, batch_tokens: int, *, seed: int, skip_batches: int = 0, rank: int = 0,
                world: int = 1) -> Any: ...
    def holdout(self, max_tokens: int, batch_tokens: int = 4096) -> Any: ...
    def holdout_contexts(self, n: int) -> Tensor: ...


class StepOutput(NamedTuple):
    loss: Tensor
    fvu: Tensor
    auxk: Tensor
    values: Tensor
    indices: Tensor


class TrainStep(nn.Module):
    """The training forward of a `TopKSAE` on scaled activations (what DDP wraps)."""

    def __init__(self, sae: TopKSAE, config: TrainConfig):
        super().__init__()
        self.sae = sae
        self.auxk_coef = config.auxk_coef
        self.k_aux = config.k_aux or sae.d_in // 2
        self.matmul_dtype = torch.bfloat16 if config.autocast == "bfloat16" else None

    def forward(self, x: Tensor, dead: Tensor | None = None) -> StepOutput:
        sae = self.sae
        use_aux = self.auxk_coef > 0 and dead is not None and len(dead) > 0
        recon, values, indices, aux_values, aux_indices = topk_autoencode(
            x, sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, sae.k, dead if use_aux else None, self.k_aux,
            self.matmul_dtype)
        x_hat = recon + sae.b_dec
        err = x_hat - x
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var
        if use_aux:
            assert dead is not None
            # Dead latents learn to predict what the live ones miss (Gao et al. App. B.1).
            scale = min(len(dead) / self.k_aux, 1.0)
            e_hat = sparse_decode(aux_values, aux_indices, sae.W_dec)
            auxk = scale * (e_hat + err.detach()).pow(2).sum() / total_var
        else:
            auxk = fvu.new_zeros(())
        return StepOutput(fvu + self.auxk_coef * auxk, fvu, auxk, values, indices)


@dataclass
class TrainResult:
    sae: TopKSAE
    """The trained SAE, input scale folded in (acts on raw activations)."""
    metrics: dict[str, Any]
    out: Path


def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm over the rows of `x`."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y


def init_sae(first: Tensor, d_sae: int, config: TrainConfig) -> tuple[TopKSAE, float]:
    """A fresh SAE for activations like `first` [n, d_in], and the input scale to train it with."""
    scale = math.sqrt(first.shape[1]) / float(first.norm(dim=1).mean()) if config.normalize else 1.0
    sae = TopKSAE.init(first.shape[1], d_sae, config.k, seed=config.seed, b_dec=geometric_median(first * scale))
    sae = sae.to(first.device)
    fit_encoder_scale(sae, first * scale)
    return sae, scale


@torch.no_grad()
def fit_encoder_scale(sae: TopKSAE, x: Tensor) -> float:
    """Scale the encoder so that the initial reconstruction of `x` has least-squares magnitude.

    With zero b_enc the codes, and so the reconstruction minus b_dec, are linear in the encoder's
    scale c (the top-k choice does not depend on it), so the best c has a closed form. A tied
    encoder (c = 1) overshoots: on smollm2's layer 9 the fit gives c = 0.70 and the FVU after
    60 steps drops from 0.259 to 0.243 (docs/RESULTS.md).
    """
    num = den = 0.0
    for chunk in x.split(4096):  # the dense pre-activations of a large batch would not fit
        recon = sae(chunk) - sae.b_dec
        num += float(((chunk - sae.b_dec) * recon).sum())
        den += float(recon.pow(2).sum())
    c = num / den if den > 0 else float("nan")
    if math.isfinite(c) and c > 0:
        sae.W_enc.mul_(c)
        return c
    return 1.0


def fold_scale(sae: TopKSAE, scale: float) -> TopKSAE:
    """A copy of `sae` (trained on x * scale) that acts on raw x with codes in raw units."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        out.b_dec.div_(scale)
        out.b_enc.div_(scale)
    out.metadata["activation_scale"] = scale
    return out


def optimizer_step(step_module: nn.Module, sae: TopKSAE, opt: torch.optim.Optimizer, x: Tensor,
                   dead: Tensor | None, lr: float) -> StepOutput:
    """Forward, backward, decoder constraint, Adam: one training step on scaled activations `x`."""
    with few_threads(x.device.type == "cpu"):
        res: StepOutput = step_module(x, dead)
        if not math.isfinite(loss := float(res.loss.detach())):
            raise SaesteerError(f"the loss became {loss}; lower --lr (the last checkpoint is intact)")
        res.loss.backward()
        sae.remove_parallel_gradient()
        for group in opt.param_groups:
            group["lr"] = lr
        with all_threads():
            opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder()
    return res


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_optimizer(params: list[nn.Parameter], config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    kw = {"lr": lr, "betas": config.adam_betas, "eps": config.adam_eps}
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kw)


def train_sae(source: Source, out: str | Path, config: TrainConfig, *, resume: bool = False,
              checkpoint_every: int = 500, device: str | torch.device = "cpu",
              eval_tokens: int = 200_000, ce_contexts: int = 0, lm: Any = None,
              progress: bool = True, log_every: int = 10) -> TrainResult | None:
    """Train on `source` and write the SAE, metrics.json and checkpoints to `out`.

    Returns the result on rank 0 (None on other ranks). `lm` (a ChatModel, or a function that
    returns one or None, called only then) with `ce_contexts > 0` adds the spliced CE/KL metrics
    on held-out contexts.
    """
    at_least(1, checkpoint_every=checkpoint_every, eval_tokens=eval_tokens)
    at_least(0, ce_contexts=ce_contexts)
    rank, world = _dist()
    device = torch.device(device if world == 1 or not torch.cuda.is_available()
                          else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    out = ensure_dir(out)
    ckpt_path = out / CHECKPOINT
    d_in = source.d_model
    d_sae = config.dict_size(d_in)
    if config.batch_tokens % world:
        raise SaesteerError(f"batch_tokens {config.batch_tokens} is not divisible by {world} ranks")
    local_batch = config.batch_tokens // world
    total_tokens = config.max_tokens or source.train_tokens
    if total_tokens is None:
        raise SaesteerError("streaming training needs --max-tokens")
    n_steps = total_tokens // config.batch_tokens
    if n_steps < 1:
        raise SaesteerError(f"only {total_tokens:,} training tokens: fewer than one batch of {config.batch_tokens:,}")
    lr = config.learning_rate(d_sae)

    if ckpt_path.exists() and not resume:
        raise SaesteerError(f"{out} already holds a training run (its {CHECKPOINT}); pass --resume to continue "
                            "it, or choose a new --out")
    state = _load_checkpoint(ckpt_path, config, source, world) if resume and ckpt_path.exists() else None
    start = state["step"] if state else 0
    batches = source.batches(local_batch, seed=config.seed, skip_batches=start, rank=rank, world=world)

    if state is None:
        first = next(iter(source.batches(local_batch, seed=config.seed, rank=0, world=world))).to(device)
        sae, scale = init_sae(first, d_sae, config)
        sae.metadata.update(source.metadata())
        since = torch.zeros(d_sae, dtype=torch.long, device=device)
    else:
        scale = state["scale"]
        sae = TopKSAE(d_in, d_sae, config.k, metadata=source.metadata()).to(device)
        sae.load_state_dict(state["sae"])
        since = state["since"].to(device)
        torch.set_rng_state(state["rng"])
    step_module: nn.Module = TrainStep(sae, config)
    if world > 1:
        # Broadcasts rank 0's weights (and so its initialisation) to every rank.
        step_module = nn.parallel.DistributedDataParallel(step_module)
    opt = make_optimizer(list(sae.parameters()), config, lr)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    scale_t = torch.tensor(scale, device=device)

    ema: dict[str, float] = dict(state["ema"]) if state else {}
    elapsed0 = state["elapsed"] if state else 0.0
    bar = tqdm(total=n_steps * config.batch_tokens, initial=start * config.batch_tokens, unit="tok",
               unit_scale=True, desc=f"train k={config.k} d_sae={d_sae}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    t0, tokens_here = time.time(), 0
    for step in range(start, n_steps):
        x = next(batches).to(device, non_blocking=True).mul_(scale_t)
        dead = (since >= config.dead_tokens).nonzero().squeeze(1) if config.auxk_coef > 0 else None
        step_lr = lr * lr_factor(step, n_steps, config.warmup_steps, config.decay_fraction)
        res = optimizer_step(step_module, sae, opt, x, dead, step_lr)
        with torch.no_grad():
            fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
            fired[res.indices[res.values > 0]] = True
            if world > 1:
                fired_i = fired.to(torch.uint8)
                dist.all_reduce(fired_i, op=dist.ReduceOp.MAX)
                fired = fired_i.bool()
            since += config.batch_tokens
            since[fired] = 0
        tokens_here += config.batch_tokens
        if (step + 1) % log_every == 0 or step + 1 == n_steps:
            vals = {"fvu": float(res.fvu.detach()), "l0": float((res.values > 0).sum(1).float().mean()),
                    "auxk": float(res.auxk.detach())}
            for key, v in vals.items():
                ema[key] = v if key not in ema else 0.9 * ema[key] + 0.1 * v
            ema["dead"] = float((since >= config.dead_tokens).float().mean())
            rate = tokens_here / max(time.time() - t0, 1e-9)
            bar.set_postfix(fvu=f"{ema['fvu']:.3f}", l0=f"{ema['l0']:.1f}", dead=f"{100 * ema['dead']:.1f}%",
                            tok_s=f"{rate:,.0f}", refresh=False)
            bar.update((step + 1) * config.batch_tokens - bar.n)
        if (step + 1) % checkpoint_every == 0 and step + 1 < n_steps:
            if rank == 0:
                _save_checkpoint(ckpt_path, config, source, world, step + 1, sae, opt, since, scale, ema,
                                 elapsed0 + time.time() - t0)
            if world > 1:
                dist.barrier()
    bar.close()
    elapsed = elapsed0 + time.time() - t0
    if rank != 0:
        dist.barrier()
        return None
    final = fold_scale(sae.cpu(), scale)
    final.requires_grad_(False)
    final.metadata.update(trained_tokens=n_steps * config.batch_tokens, saesteer_train=config.to_dict())
    save_sae(final, out)
    from saesteer.sae.metrics import evaluate_sae

    if callable(lm) and ce_contexts > 0:
        lm = lm()
    contexts = source.holdout_contexts(ce_contexts) if (lm is not None and ce_contexts > 0) else None
    metrics = evaluate_sae(copy.deepcopy(final).to(device), activations=source.holdout(eval_tokens), lm=lm,
                           contexts=contexts, progress=progress)
    metrics.update(train_fvu_ema=ema.get("fvu"), train_dead_fraction=ema.get("dead"),
                   train_tokens=n_steps * config.batch_tokens, steps=n_steps, world_size=world,
                   tokens_per_second=round(tokens_here / max(elapsed - elapsed0, 1e-9), 1),
                   train_seconds=round(elapsed, 1), lr=lr, activation_scale=scale)
    write_json(out / "metrics.json", metrics)
    _save_checkpoint(ckpt_path, config, source, world, n_steps, sae, opt, since, scale, ema, elapsed,
                     finished=True)
    if world > 1:
        dist.barrier()
    return TrainResult(final, metrics, out)


def _save_checkpoint(path: Path, config: TrainConfig, source: Source, world: int, step: int, sae: TopKSAE,
                     opt: torch.optim.Optimizer, since: Tensor, scale: float, ema: dict[str, float],
                     elapsed: float, finished: bool = False) -> None:
    state = {"version": CHECKPOINT_VERSION, "finished": finished, "config": config.to_dict(), "source": source.identity(),
             "world_size": world, "step": step, "sae": {k: v.cpu() for k, v in sae.state_dict().items()},
             "optimizer": opt.state_dict(), "since": since.cpu(), "scale": scale, "rng": torch.get_rng_state(),
             "ema": ema, "elapsed": elapsed}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, config: TrainConfig, source: Source, world: int) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises assorted errors on damaged files
        raise SaesteerError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to start over") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise SaesteerError(f"{path} is not a saesteer SAE checkpoint (version {CHECKPOINT_VERSION})")
    old, now = state["source"], source.identity()
    if old.get("d_model") != now["d_model"]:
        raise SaesteerError(f"the activations have width {now['d_model']} but the checkpoint's SAE in {path.parent} "
                            f"has d_in = {old.get('d_model')}; use a new --out")
    diff = [k for k in now if old.get(k) != now[k]]
    if diff:
        changes = "; ".join(f"{k} {old.get(k)!r} vs now {now[k]!r}" for k in diff)
        raise SaesteerError(f"checkpoint {path} was trained on other activations (different {changes}); "
                            "use a new --out")
    if state["config"] != config.to_dict():
        diff = [k for k, v in config.to_dict().items() if state["config"].get(k) != v]
        raise SaesteerError(f"checkpoint {path} has other settings ({', '.join(diff)}); resume with the "
                            "same options or use a new --out")
    if state["world_size"] != world:
        raise SaesteerError(f"checkpoint {path} was written by {state['world_size']} processes; resume with as many")
    return state
