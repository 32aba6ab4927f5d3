"""Sparse probes over SAE latents for conditional steering (the `sae_probe` detector).

An L1-regularised logistic regression on prompt codes mean-pooled over the user's text:
harmful prompts against harmless ones. Few latents keep a weight, so the detector is
readable (its latents are listed) and cheap (only those latents are encoded). The threshold is
chosen on a calibration split the probe never saw, at a target false-positive rate on its
harmless prompts, because a threshold set on the training prompts lets through far more
held-out harmless prompts than it promises.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saesteer.errors import SaesteerError
from saesteer.steer.conditions import threshold_for_fpr
from saesteer.steer.spec import ConditionSpec, FileRef


@dataclass
class SparseProbe:
    weight: torch.Tensor
    """[d_sae] weights over the latents, zero for all but a few."""
    bias: float
    threshold: float
    """On the probe's logit (mean-pooled codes), at the target false-positive rate."""
    scale: torch.Tensor | None = None
    """[d_sae] spread of each latent's pooled code on the fitting prompts."""
    calibration: dict = field(default_factory=dict)

    def latents(self) -> list[dict]:
        """The latents that carry weight, most influential (weight x spread) first."""
        idx = self.weight.nonzero().flatten().tolist()
        scale = self.scale if self.scale is not None else torch.ones_like(self.weight)
        return sorted(({"feature": i, "weight": round(float(self.weight[i]), 4),
                        "standardised": round(float(self.weight[i] * scale[i]), 4)} for i in idx),
                      key=lambda d: -abs(d["standardised"]))

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() @ self.weight + self.bias


def split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded (fit, calibration) split; each side keeps at least one item."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(1, round(n * (1 - fraction))), n - 1)
    return sorted(order[:k]), sorted(order[k:])


def fit_sparse_probe(harmful: torch.Tensor, harmless: torch.Tensor, *, target_fpr: float = 0.05,
                     calibration_fraction: float = 0.3, c: float = 0.5, seed: int = 0) -> SparseProbe:
    """Fit on part of each class's mean-pooled codes ([n, d_sae]), calibrate the threshold on
    the rest, and report the calibration split's true- and false-positive rates."""
    from sklearn.linear_model import LogisticRegression

    if len(harmful) < 4 or len(harmless) < 4:
        raise SaesteerError(f"a sparse probe needs at least 4 harmful and 4 harmless prompts "
                            f"(got {len(harmful)} and {len(harmless)}); rank more prompts (--n-rank)")
    h_fit, h_cal = split(len(harmful), calibration_fraction, seed)
    s_fit, s_cal = split(len(harmless), calibration_fraction, seed + 1)
    x = torch.cat([harmful[h_fit], harmless[s_fit]]).double()
    y = [1] * len(h_fit) + [0] * len(s_fit)
    scale = x.std(0).clamp(min=1e-6)      # codes differ in scale by orders of magnitude
    clf = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, max_iter=5000, class_weight="balanced")
    clf.fit((x / scale).numpy(), y)
    weight = (torch.tensor(clf.coef_[0]) / scale).float()
    bias = float(clf.intercept_[0])
    if not weight.any():
        raise SaesteerError("the sparse probe kept no latent (no latent separates harmful from harmless prompts "
                            "at this strength); raise the probe's C or rank more prompts")
    probe = SparseProbe(weight, bias, 0.0, scale.float())
    neg, pos = probe.logits(harmless[s_cal]), probe.logits(harmful[h_cal])
    probe.threshold = threshold_for_fpr(neg, target_fpr)
    tpr = float((pos > probe.threshold).float().mean())
    fpr = float((neg > probe.threshold).float().mean())
    if tpr == 0.0:
        raise SaesteerError(f"the sparse probe never fires on the calibration split's harmful prompts at a "
                            f"{target_fpr:.0%} false-positive rate; allow a higher rate (--detector-fpr) or rank "
                            "more prompts")
    probe.calibration = {"target_fpr": target_fpr, "calibration_tpr": round(tpr, 4),
                         "calibration_fpr": round(fpr, 4), "n_fit": [len(h_fit), len(s_fit)],
                         "n_calibration": [len(h_cal), len(s_cal)], "C": c, "pooling": "mean",
                         "latents": len(probe.latents())}
    return probe


def sparse_probe_condition(probe: SparseProbe, hook: str, sae: FileRef, weights_path: str | Path,
                           **calibration: object) -> ConditionSpec:
    """Write the probe's weights next to the spec and return the `sae_probe` condition."""
    from saesteer.files import sha256_file
    from saesteer.steer.directions import save_vectors

    path = save_vectors(weights_path, {"sae_probe": probe.weight}, {"bias": str(probe.bias)})
    return ConditionSpec(detector="sae_probe", hook=hook, sae=sae,
                         vector=FileRef(str(Path(path).resolve()), sha256_file(path)[:16], key="sae_probe"),
                         bias=probe.bias, threshold=probe.threshold, pooling="mean",
                         calibration={**probe.calibration, **calibration})
