"""Training configuration of a Top-k SAE."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from saesteer.errors import SaesteerError, at_least


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (and so must match on --resume)."""

    k: int = 32
    """Active latents per token."""
    expansion: int = 8
    """Latents per input dimension (d_sae = expansion * d_in) unless `d_sae` is given."""
    d_sae: int | None = None
    """Dictionary size; overrides `expansion`."""
    batch_tokens: int = 4096
    """Tokens per optimiser step, summed over all data-parallel ranks."""
    max_tokens: int | None = None
    """Training tokens; None = one pass over the training shards (streaming: required)."""
    lr: float | None = None
    """Adam learning rate; None = 2e-3 / sqrt(d_sae / 2**14): sparsify's width rule x 10, the
    scale that measured best for 0.3-1M-token runs with 4,096-token batches (docs/RESULTS.md)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0; then linear decay to 0 over the last `decay_fraction`."""
    decay_fraction: float = 0.2
    """Share of the run (at its end) over which the learning rate decays linearly to 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    """Gao et al.'s value: rare latents get small gradients, which a larger eps would damp."""
    auxk_coef: float = 1 / 32
    """Weight of the AuxK loss on dead latents (Gao et al.); 0 turns it off as the paper did."""
    k_aux: int | None = None
    """Dead latents used by AuxK per token; None = d_in // 2."""
    dead_tokens: int = 1_000_000
    """A latent that has not fired for this many training tokens counts as dead (for AuxK)."""
    normalize: bool = True
    """Scale inputs so that their mean norm is sqrt(d_in); the scale is folded into the saved
    weights (and recorded in cfg.json metadata)."""
    autocast: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the dense encoder product; bfloat16 is for GPUs (CPUs emulate it slowly)."""
    seed: int = 0
    """Seeds the initialisation and the data order."""
    holdout_tokens: int = 200_000
    """Activation tokens (the last shards) kept out of training for the metrics."""
    buffer_shards: int = 4
    """Shards shuffled together in memory."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.expansion < 1 or (self.d_sae is not None and self.d_sae < 1):
            raise SaesteerError("k, expansion and d_sae must be positive")
        if self.d_sae is not None and self.k > self.d_sae:
            raise SaesteerError(f"k = {self.k} is larger than the dictionary ({self.d_sae} latents)")
        if self.batch_tokens < 1 or (self.max_tokens is not None and self.max_tokens < self.batch_tokens):
            raise SaesteerError("batch_tokens must be positive and max_tokens at least one batch")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SaesteerError(f"lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.auxk_coef) and self.auxk_coef >= 0) or self.dead_tokens < 1 \
                or not 0 <= self.decay_fraction <= 1:
            raise SaesteerError("auxk_coef must be >= 0, dead_tokens >= 1, decay_fraction in [0, 1]")
        at_least(1, k_aux=self.k_aux, buffer_shards=self.buffer_shards)
        at_least(0, warmup_steps=self.warmup_steps)
        if self.holdout_tokens < 1:
            raise SaesteerError(f"holdout_tokens must be at least 1, got {self.holdout_tokens}: the metrics "
                                "need held-out tokens, or they are measured on training data")
        if self.autocast not in ("float32", "bfloat16"):
            raise SaesteerError(f"unknown autocast dtype {self.autocast!r}; use float32 or bfloat16")
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]

    def dict_size(self, d_in: int) -> int:
        d_sae = self.d_sae or self.expansion * d_in
        if self.k > d_sae:
            raise SaesteerError(f"k = {self.k} is larger than the dictionary ({d_sae} latents)")
        return d_sae

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-3 / (d_sae / 2**14) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0
