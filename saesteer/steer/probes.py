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
from saesteer.models import ChatModel
from saesteer.steer.spec import ConditionSpec, FileRef, SteeringSpec


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


L1_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""L1 strengths tried for a sparse probe (inverse regularisation; larger keeps more latents)."""
CV_FOLDS = 5


def fit_sparse_probe(harmful: torch.Tensor, harmless: torch.Tensor, *, target_fpr: float = 0.05,
                     calibration_fraction: float = 0.3, c: float | None = None, seed: int = 0) -> SparseProbe:
    """Fit an L1 probe on part of each class's mean-pooled SAE codes ([n, d_sae]), calibrate the
    threshold on the rest, and report the calibration split's true- and false-positive rates.
    Without `c`, the L1 strength is chosen from `L1_GRID` by cross-validation on the fitting part."""
    return _fit(harmful, harmless, l1=True, target_fpr=target_fpr, calibration_fraction=calibration_fraction,
                c=c, seed=seed)


def fit_dense_probe(harmful: torch.Tensor, harmless: torch.Tensor, *, target_fpr: float = 0.05,
                    calibration_fraction: float = 0.3, c: float = 1.0, seed: int = 0) -> SparseProbe:
    """The dense baseline: an L2 probe on mean-pooled residuals ([n, d_model]), same split and
    calibration (its `weight` is dense, so `latents()` lists every dimension)."""
    return _fit(harmful, harmless, l1=False, target_fpr=target_fpr, calibration_fraction=calibration_fraction,
                c=c, seed=seed)


def _fit(harmful: torch.Tensor, harmless: torch.Tensor, *, l1: bool, target_fpr: float,
         calibration_fraction: float, c: float | None, seed: int) -> SparseProbe:
    from sklearn.linear_model import LogisticRegression

    if len(harmful) < 4 or len(harmless) < 4:
        raise SaesteerError(f"a probe needs at least 4 harmful and 4 harmless prompts "
                            f"(got {len(harmful)} and {len(harmless)}); rank more prompts (--n-rank)")
    h_fit, h_cal = split(len(harmful), calibration_fraction, seed)
    s_fit, s_cal = split(len(harmless), calibration_fraction, seed + 1)
    x = torch.cat([harmful[h_fit], harmless[s_fit]]).double()
    y = [1] * len(h_fit) + [0] * len(s_fit)
    scale = x.std(0).clamp(min=1e-6)      # features differ in scale by orders of magnitude
    centre = torch.zeros_like(scale) if l1 else x.mean(0)
    features = ((x - centre) / scale).numpy()
    if l1 and c is None and min(len(h_fit), len(s_fit)) >= CV_FOLDS:
        # The L1 strength decides how many latents survive: choose it by cross-validated AUROC
        # on the fitting prompts, never on the calibration split.
        import warnings

        from sklearn.linear_model import LogisticRegressionCV

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            search = LogisticRegressionCV(Cs=L1_GRID, cv=CV_FOLDS, l1_ratios=[1.0], solver="liblinear",
                                          scoring="roc_auc", max_iter=5000, class_weight="balanced",
                                          random_state=seed).fit(features, y)
        c = float(search.C_[0])
    c = 0.5 if c is None else c
    # liblinear shuffles the data: without its own seed it draws one from numpy's global state,
    # and the C chosen (so the probe, the gate and the demo's pick) changed from run to run.
    clf = LogisticRegression(l1_ratio=1.0 if l1 else 0.0, solver="liblinear", C=c, max_iter=5000,
                             class_weight="balanced", random_state=seed)
    clf.fit(features, y)
    weight = (torch.tensor(clf.coef_[0]) / scale).float()
    bias = float(clf.intercept_[0]) - float((weight.double() * centre).sum())
    if not weight.any():
        raise SaesteerError("the sparse probe kept no latent (no latent separates harmful from harmless prompts "
                            "at this strength); raise the probe's C or rank more prompts")
    probe = SparseProbe(weight, bias, 0.0, scale.float())
    neg, pos = probe.logits(harmless[s_cal]), probe.logits(harmful[h_cal])
    probe.threshold = threshold_for_fpr(neg, target_fpr)
    tpr = float((pos > probe.threshold).float().mean())
    fpr = float((neg > probe.threshold).float().mean())
    if tpr == 0.0:
        raise SaesteerError(f"the probe never fires on the calibration split's harmful prompts at a "
                            f"{target_fpr:.0%} false-positive rate; allow a higher rate (--detector-fpr) or rank "
                            "more prompts")
    probe.calibration = {"target_fpr": target_fpr, "calibration_tpr": round(tpr, 4),
                         "calibration_fpr": round(fpr, 4), "n_fit": [len(h_fit), len(s_fit)],
                         "n_calibration": [len(h_cal), len(s_cal)], "C": c, "pooling": "mean",
                         "penalty": "l1" if l1 else "l2", "nonzero": len(probe.latents())}
    return probe


def sparse_probe_condition(probe: SparseProbe, hook: str, sae: FileRef | None, weights_path: str | Path,
                           **calibration: object) -> ConditionSpec:
    """Write the probe's weights next to the spec and return its condition: `sae_probe` over the
    latents of `sae`, or (without an SAE) the dense `probe` over the residual stream."""
    from saesteer.files import sha256_file
    from saesteer.steer.directions import save_vectors

    kind = "sae_probe" if sae is not None else "probe"
    path = save_vectors(weights_path, {kind: probe.weight}, {"bias": str(probe.bias)})
    return ConditionSpec(detector=kind, hook=hook, sae=sae,
                         vector=FileRef(str(Path(path).resolve()), sha256_file(path)[:16], key=kind),
                         bias=probe.bias, threshold=probe.threshold, pooling="mean",
                         calibration={**probe.calibration, **calibration})


def write_probe_specs(lm: ChatModel, out: Path, base: SteeringSpec, hook: str, sae: FileRef,
                      codes: torch.Tensor, is_harmful: torch.Tensor, prompts: list, *, target_fpr: float,
                      seed: int, on: str) -> tuple[dict[str, str], dict[str, dict | None]]:
    """Conditional versions of `base` gated by a sparse probe over the SAE's latents (fitted on the
    prompts' mean-pooled `codes`) and by its dense baseline (on their mean residuals): spec files
    written into `out`, and what each probe is (None with the reason printed when it cannot be fitted)."""
    from saesteer.steer.directions import mean_residuals

    specs: dict[str, str] = {}
    info: dict[str, dict | None] = {}
    for name, kind in (("conditional_probe", "sparse"), ("conditional_dense_probe", "dense")):
        try:
            if kind == "sparse":
                probe = fit_sparse_probe(codes[is_harmful], codes[~is_harmful], target_fpr=target_fpr, seed=seed)
            else:
                x = mean_residuals(lm, prompts, [hook], select="content")
                x = next(iter(x.values()))
                probe = fit_dense_probe(x[is_harmful], x[~is_harmful], target_fpr=target_fpr, seed=seed)
        except SaesteerError as e:
            info[name] = None
            print(f"[discover] no {kind} probe detector: {e}", flush=True)
            continue
        condition = sparse_probe_condition(probe, hook, sae if kind == "sparse" else None,
                                           out / f"{name}.safetensors", on=on)
        SteeringSpec(name=f"{name}-{base.name}", description=f"{base.description}, only when the {kind} probe "
                     "flags the prompt", model=base.model, interventions=base.interventions,
                     condition=condition).save(out / f"{name}.yaml")
        specs[name] = f"{name}.yaml"
        info[name] = {**probe.calibration, "threshold": probe.threshold, "bias": probe.bias,
                      **({"top_latents": probe.latents()[:20]} if kind == "sparse" else {})}
        print(f"[discover] {kind} probe: on held-out calibration prompts it flags "
              f"{probe.calibration['calibration_tpr']:.0%} of harmful and "
              f"{probe.calibration['calibration_fpr']:.0%} of harmless ones", flush=True)
    return specs, info
