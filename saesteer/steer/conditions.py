"""Conditional steering: steer a row only when a detector on its prompt fires.

A detector scores each prompt token at one hook point (an SAE latent's activation, a sparse
probe over SAE latents, a dense linear probe, or the cosine with a condition direction as in
CAST), pools the scores over the
prompt's content tokens (chat scaffolding excluded; with `scope="last_turn"` only the final
user message's text, so that few-shot or earlier turns do not trigger it) and compares with a
threshold chosen on a validation split. Every row decides for itself, at every prefill, so a
multi-turn conversation is re-decided each turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from saesteer.errors import SaesteerError
from saesteer.generate import CONTENT, HISTORY, forward_info
from saesteer.hooks import HookPoint, StopForward, base_model, forward_hooks, output_tensor
from saesteer.steer.interventions import steering_paused_context

Pooling = str
"""max, mean, last, or windowN: the highest mean score of any N consecutive tokens read."""
POOLINGS = ("max", "mean", "last", "windowN (e.g. window16)")
_WINDOW = re.compile(r"window([1-9][0-9]{0,3})")
Scope = Literal["prompt", "last_turn"]
SCOPES = ("prompt", "last_turn")


def check_pooling(pooling: str) -> None:
    if pooling not in ("max", "mean", "last") and not _WINDOW.fullmatch(str(pooling)):
        raise SaesteerError(f"unknown condition pooling {pooling!r}; use {', '.join(POOLINGS)}")


class Detector:
    """Per-token scores at one hook point."""

    kind: str = "detector"

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """[N, d] residuals → [N] scores."""
        raise NotImplementedError


class SAEFeatureDetector(Detector):
    kind = "sae_feature"

    def __init__(self, sae: Any, feature: int):
        if not 0 <= feature < sae.d_sae:
            raise SaesteerError(f"detector feature {feature} is out of range: the SAE has {sae.d_sae} latents")
        self.sae, self.feature = sae, feature

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor([self.feature], device=x.device)
        return self.sae.feature_acts(x.to(self.sae.W_dec.dtype), idx)[:, 0].float()


class ProbeDetector(Detector):
    """Logistic-regression probe: score = w·x + b (a logit)."""

    kind = "probe"

    def __init__(self, weight: torch.Tensor, bias: float):
        self.weight, self.bias = weight.detach().float(), float(bias)

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.to(x.device) + self.bias


class SAEProbeDetector(Detector):
    """Sparse probe over SAE latents: score = w·z(x) + b, with w non-zero on a few latents (an L1
    logistic regression on prompt-pooled codes, `steer.probes`). Only those latents are encoded.
    With mean pooling the pooled score is exactly the probe's logit on the mean-pooled codes it
    was fitted on."""

    kind = "sae_probe"

    def __init__(self, sae: Any, weight: torch.Tensor, bias: float):
        weight = weight.detach().float().flatten()
        if weight.numel() != sae.d_sae:
            raise SaesteerError(f"sae_probe weights have {weight.numel()} entries but the SAE has {sae.d_sae} latents; "
                                "refit the probe on this SAE (saesteer discover)")
        self.sae, self.bias = sae, float(bias)
        self.idx = weight.nonzero().flatten()
        self.weight = weight[self.idx]

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.idx.numel() == 0:
            return torch.full(x.shape[:1], self.bias, device=x.device)
        z = self.sae.feature_acts(x.to(self.sae.W_dec.dtype), self.idx.to(x.device)).float()
        return z @ self.weight.to(x.device) + self.bias


class DirectionDetector(Detector):
    """CAST-style condition: cosine between the hidden state and the condition direction."""

    kind = "direction"

    def __init__(self, vector: torch.Tensor):
        self.unit = (vector / vector.norm()).detach().float()

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return (x @ self.unit.to(x.device)) / x.norm(dim=-1).clamp(min=1e-6)


def pool(scores: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[B, T] token scores, [B, T] bool mask of tokens to read → [B] pooled scores.

    `windowN` takes the mean over every N consecutive tokens read and keeps the highest, so a
    request wrapped in a long template is scored on its own words rather than diluted by the
    wrapper's, as the mean would be; a prompt shorter than N gets its mean."""
    window = _WINDOW.fullmatch(pooling)
    if window:
        n = int(window.group(1))
        out = []
        for row, keep in zip(scores, mask):
            read = row[keep]
            if read.numel() == 0:
                out.append(row.new_tensor(float("-inf")))
            else:
                out.append(read.mean() if read.numel() <= n else read.unfold(0, n, 1).mean(1).max())
        return torch.stack(out)
    if pooling == "max":
        return scores.masked_fill(~mask, float("-inf")).max(dim=1).values
    if pooling == "mean":
        return (scores * mask).sum(1) / mask.sum(1).clamp(min=1)
    last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
    return scores.gather(1, last[:, None])[:, 0]


@dataclass
class Condition:
    """Steer only rows whose pooled detector score passes `threshold`."""

    point: HookPoint
    detector: Detector
    threshold: float
    pooling: Pooling = "max"
    direction: Literal["above", "below"] = "above"
    scope: Scope = "prompt"
    """Tokens read: the whole prompt's text, or only the final user message's."""

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.scope not in SCOPES:
            raise SaesteerError(f"unknown condition scope {self.scope!r}; use {', '.join(SCOPES)}")

    def pooled_scores(self, hidden: torch.Tensor, read_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = hidden.shape
        scores = self.detector.token_scores(hidden.reshape(-1, d)).reshape(b, t)
        return pool(scores, read_mask, self.pooling)

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled > self.threshold if self.direction == "above" else pooled < self.threshold


def content_mask(batch: int, seq: int, device: torch.device, scope: Scope = "prompt") -> torch.Tensor:
    """Tokens a detector reads: the prompt's content (chat scaffolding and padding excluded), or
    with `scope="last_turn"` the final message's text only."""
    info = forward_info()
    if info is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    roles = info.roles[:, -seq:]
    mask = roles == CONTENT if scope == "last_turn" else (roles == CONTENT) | (roles == HISTORY)
    # A prompt without recognisable content (raw text) is read whole.
    empty = ~mask.any(dim=1)
    if empty.any():
        mask[empty] = info.roles[empty][:, -seq:] != 0
    return mask


class ConditionGate:
    """Keeps each row's steer / don't-steer decision, made from its prompt at prefill."""

    def __init__(self, condition: Condition):
        self.condition = condition
        self.decisions: dict[int, bool] = {}
        self.scores: dict[int, float] = {}
        self.last_pooled: torch.Tensor | None = None
        """Pooled scores of the latest prefill (rows in batch order), for inspection."""

    def record(self, hidden: torch.Tensor) -> None:
        b, t, _ = hidden.shape
        pooled = self.condition.pooled_scores(hidden, content_mask(b, t, hidden.device, self.condition.scope))
        decided = self.condition.decide(pooled)
        self.last_pooled = pooled
        info = forward_info()
        rows = info.rows.tolist() if info is not None else list(range(b))
        for row, score, steer in zip(rows, pooled.tolist(), decided.tolist()):
            self.decisions[row] = bool(steer)
            self.scores[row] = float(score)
        self._current = decided

    def rows_mask(self, batch: int, device: torch.device) -> torch.Tensor | None:
        info = forward_info()
        if info is None:
            current = getattr(self, "_current", None)
            if current is None or len(current) != batch:
                raise SaesteerError("conditional steering needs the prompt's forward pass first")
            return current.to(device)
        return torch.tensor([self.decisions.get(r, False) for r in info.rows.tolist()], device=device)

    def detect_hook(self):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            info = forward_info()
            if info is None or info.prefill:
                self.record(output_tensor(output))

        return hook

    def prepass_hook(self, model: nn.Module):
        """A forward pre-hook on the whole model that reads the detector layer before steering runs
        (used when the detector sits deeper than a steered layer)."""
        inner = base_model(model)
        point = self.condition.point
        state = {"busy": False}

        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.record(output_tensor(output))
            raise StopForward

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            info = forward_info()
            if state["busy"] or not (info is None or info.prefill):
                return
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            state["busy"] = True
            try:
                with forward_hooks([(point.module, capture)]), steering_paused_context():
                    inner(input_ids=input_ids, attention_mask=kwargs.get("attention_mask"),
                          position_ids=kwargs.get("position_ids"), use_cache=False)
            except StopForward:
                pass
            finally:
                state["busy"] = False

        return pre_hook


def threshold_for_fpr(negative_scores: torch.Tensor | list[float], target_fpr: float) -> float:
    """The threshold whose false-positive rate on these negatives is at most `target_fpr`."""
    scores = torch.as_tensor(negative_scores, dtype=torch.float64)
    if scores.numel() == 0:
        raise SaesteerError("threshold calibration needs negative (safe) examples")
    if not 0 <= target_fpr < 1:
        raise SaesteerError("target false-positive rate must be in [0, 1)")
    ordered = scores.sort(descending=True).values
    allowed = int(target_fpr * len(ordered))
    return float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])
