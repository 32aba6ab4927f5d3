"""Interventions on the residual stream at one hook point, and the hooks that apply them.

SAE feature edits keep the SAE's reconstruction error: with codes z = encode(x) and edited
codes z', the new residual is decode(z') + (x - decode(z)) = x + Σ_i (z'_i - z_i) · W_dec[i].
Only the edited latents matter, so the delta is a small matrix product and never drifts by
the SAE's reconstruction error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from saesteer.errors import SaesteerError
from saesteer.generate import CONTENT, GENERATED, HISTORY, TEMPLATE, forward_info
from saesteer.hooks import HookPoint, forward_hooks, output_tensor, replace_output

FeatureOp = Literal["clamp", "add", "scale", "ablate"]
DirectionOp = Literal["add", "project_out", "clamp"]
Positions = Literal["all", "prompt", "generated"]
POSITIONS = ("all", "prompt", "generated")


MAX_VALUE = 1e6
"""Largest edit value or factor accepted: SAE latents and steering strengths are far smaller, and
beyond this a float16/bfloat16 residual overflows into NaN and empty answers."""


def check_value(value: float, what: str) -> float:
    """A finite edit value within ±MAX_VALUE (a clamp of 1e30 is a typo, not a setting)."""
    value = float(value)
    if not math.isfinite(value):
        raise SaesteerError(f"{what} value must be a finite number, got {value}")
    if abs(value) > MAX_VALUE:
        raise SaesteerError(f"{what} value {value:g} is out of range; use a value within ±{MAX_VALUE:g} "
                            "(latent activations and steering strengths are far smaller)")
    return value


@dataclass(frozen=True)
class FeatureEdit:
    """One SAE latent edit: clamp to a value, add value·W_dec[i], scale by a factor, or ablate."""

    feature: int
    op: FeatureOp = "clamp"
    value: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.feature, bool) or not isinstance(self.feature, int) or self.feature < 0:
            raise SaesteerError(f"feature must be a latent index (a whole number >= 0), got {self.feature!r}")
        if self.op not in ("clamp", "add", "scale", "ablate"):
            raise SaesteerError(f"unknown feature op {self.op!r}; use clamp, add, scale or ablate")
        check_value(self.value, f"{self.op} {self.feature}")


class SAEFeatureIntervention:
    """Edits of several latents of one SAE, applied as x + Σ (z'_i − z_i) · W_dec[i]."""

    def __init__(self, sae: Any, edits: list[FeatureEdit]):
        if not edits:
            raise SaesteerError("an SAE intervention needs at least one feature edit")
        for e in edits:
            if not 0 <= e.feature < sae.d_sae:
                raise SaesteerError(f"feature {e.feature} is out of range: this SAE has {sae.d_sae} latents (0-{sae.d_sae - 1})")
        self.sae = sae
        self.edits = edits
        self.features = torch.tensor([e.feature for e in edits])
        self._needs_acts = any(e.op != "add" for e in edits)
        self._directions: torch.Tensor | None = None

    def _rows(self, like: torch.Tensor) -> torch.Tensor:
        if self._directions is None or self._directions.device != like.device or self._directions.dtype != like.dtype:
            self._directions = self.sae.W_dec.detach()[self.features.to(self.sae.W_dec.device)].to(like.device, like.dtype)
        return self._directions

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """[N, n_edits] multipliers of each edited latent's decoder row."""
        n = x.shape[0]
        if self._needs_acts:
            z = self.sae.feature_acts(x.to(self.sae.W_dec.dtype), self.features.to(x.device)).to(x.dtype)
        else:
            z = x.new_zeros((n, len(self.edits)))
        cols = []
        for j, e in enumerate(self.edits):
            match e.op:
                case "clamp":
                    cols.append(e.value - z[:, j])
                case "add":
                    cols.append(x.new_full((n,), e.value))
                case "scale":
                    cols.append((e.value - 1.0) * z[:, j])
                case "ablate":
                    cols.append(-z[:, j])
        return torch.stack(cols, dim=1)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.coefficients(x) @ self._rows(x)


class DirectionIntervention:
    """A dense direction: add value·v, project v̂ out, or set the projection on v̂ to value."""

    def __init__(self, vector: torch.Tensor, op: DirectionOp = "add", value: float = 1.0):
        if op not in ("add", "project_out", "clamp"):
            raise SaesteerError(f"unknown direction op {op!r}; use add, project_out or clamp")
        if vector.ndim != 1 or not torch.isfinite(vector).all() or vector.norm() == 0:
            raise SaesteerError("a steering direction must be a finite, non-zero vector")
        self.vector = vector.detach().float()
        self.unit = self.vector / self.vector.norm()
        self.op = op
        self.value = check_value(value, f"direction {op}")

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(x.device, x.dtype)
        u = self.unit.to(x.device, x.dtype)
        match self.op:
            case "add":
                return self.value * v.expand_as(x)
            case "project_out":
                return -(x @ u)[:, None] * u
            case _:
                return (self.value - x @ u)[:, None] * u


Intervention = SAEFeatureIntervention | DirectionIntervention


def position_mask(positions: Positions, batch: int, seq: int, device: torch.device) -> torch.Tensor | None:
    """[batch, seq] bool of the tokens to steer, or None for every token."""
    info = forward_info()
    if positions == "all":
        return None if info is None else info.roles[:, -seq:] != 0
    if info is None:  # a plain forward (no generation): every token is prompt
        return None if positions == "prompt" else torch.zeros(batch, seq, dtype=torch.bool, device=device)
    roles = info.roles[:, -seq:]
    if positions == "prompt":
        return (roles == TEMPLATE) | (roles == CONTENT) | (roles == HISTORY)
    return roles == GENERATED


_PAUSED = {"depth": 0}


@contextlib.contextmanager
def steering_paused_context() -> Iterator[None]:
    """Steering hooks leave activations alone inside this block (a detector's pre-pass)."""
    _PAUSED["depth"] += 1
    try:
        yield
    finally:
        _PAUSED["depth"] -= 1


class RowGate:
    """Which rows of the batch are steered (conditional steering); None = all rows."""

    def rows_mask(self, batch: int, device: torch.device) -> torch.Tensor | None:  # pragma: no cover - interface
        return None


def steering_hook(interventions: list[Intervention], positions: Positions, gate: RowGate | None = None):
    """A forward hook that adds the interventions' deltas to the selected tokens of a block's output."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if _PAUSED["depth"]:
            return None
        hidden = output_tensor(output)
        batch, seq, d = hidden.shape
        mask = position_mask(positions, batch, seq, hidden.device)
        rows = gate.rows_mask(batch, hidden.device) if gate is not None else None
        if rows is not None:
            rows = rows[:, None].expand(batch, seq)
            mask = rows if mask is None else mask & rows
        if mask is not None and bool(mask.all()):
            mask = None
        if mask is None:
            flat = hidden.reshape(-1, d)
            delta = sum(iv.delta(flat) for iv in interventions)
            return replace_output(output, hidden + delta.reshape(batch, seq, d))
        if not bool(mask.any()):
            return None
        selected = hidden[mask]
        delta = sum(iv.delta(selected) for iv in interventions)
        steered = hidden.clone()
        steered[mask] = selected + delta
        return replace_output(output, steered)

    return hook


@contextlib.contextmanager
def apply_interventions(groups: list[tuple[HookPoint, list[Intervention]]], positions: Positions = "all",
                        gate: RowGate | None = None) -> Iterator[None]:
    """Register one steering hook per hook point; they always come off, also on exceptions."""
    if positions not in POSITIONS:
        raise SaesteerError(f"unknown positions {positions!r}; use {', '.join(POSITIONS)}")
    with forward_hooks([(point.module, steering_hook(ivs, positions, gate)) for point, ivs in groups]):
        yield
