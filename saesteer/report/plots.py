"""Matplotlib figures of a sweep's tidy results (PNG files)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SAFETY = ("unsafe_refusal", "safe_over_refusal")
QUALITY = ("unsafe_coherent_refusal", "unsafe_broken", "safe_broken", "harmless_kl")
"""Answer-quality metrics (and the KL from the unsteered model on harmless answers): neither
safety axes nor capability accuracies."""
LABELS = {"unsafe_refusal": "refusal on unsafe prompts ↑", "safe_over_refusal": "over-refusal on safe prompts ↓",
          "unsafe_coherent_refusal": "coherent refusal on unsafe prompts ↑",
          "unsafe_broken": "broken answers, unsafe prompts ↓", "safe_broken": "broken answers, safe prompts ↓",
          "capability": "capability (mean accuracy) ↑",
          "harmless_kl": "KL from unsteered on harmless answers ↓"}
METHOD_STYLE = {"none": ("k", "o"), "sae_clamp": ("tab:red", "o"), "conditional_sae_clamp": ("tab:purple", "s"),
                "refusal_direction": ("tab:blue", "^"), "caa": ("tab:green", "D"), "spec": ("tab:orange", "*")}
"""`spec`: a spec file evaluated as is, such as the `best.yaml` a search chose."""
FAMILY_STYLE = {**METHOD_STYLE, "sae_spec": ("tab:orange", "*"), "sae_spec_gated": ("tab:brown", "P"),
                "dense_spec": ("tab:olive", "X"), "dense_spec_gated": ("tab:cyan", "v")}
"""Spec files split by what they steer with and whether a detector gates them (`sweep.spec_family`)."""
FAMILY_LABELS = {"none": "none", "sae_clamp": "SAE clamp", "conditional_sae_clamp": "SAE clamp, gated",
                 "refusal_direction": "DiffMean", "caa": "CAA", "spec": "spec file", "sae_spec": "SAE-guided spec",
                 "sae_spec_gated": "SAE-guided spec, gated", "dense_spec": "dense spec",
                 "dense_spec_gated": "dense spec, gated"}


def by_run(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{run name: {method, strength, metric → (value, lo, hi)}} from the tidy rows (dataset 'all')."""
    runs: dict[str, dict[str, Any]] = {}
    caps: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        run = runs.setdefault(r["name"], {"method": r["method"], "family": r.get("family") or r["method"],
                                          "strength": r["strength"], "feature": r["feature"]})
        if r["metric"] in SAFETY + QUALITY:
            if r["dataset"] == "all":
                run[r["metric"]] = (r["value"], r["ci_low"], r["ci_high"])
        elif r["value"] is not None:
            run[r["metric"]] = (r["value"], r["ci_low"], r["ci_high"])
            caps[r["name"]].append(r["value"])
    for name, values in caps.items():
        runs[name]["capability"] = (sum(values) / len(values), None, None)
    return runs


def strength_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    runs = by_run(rows)
    methods = [m for m in METHOD_STYLE if m not in ("none", "spec") and any(r["method"] == m for r in runs.values())]
    metrics = [m for m in ("unsafe_refusal", "safe_over_refusal", "capability") if any(m in r for r in runs.values())]
    baseline = next((r for r in runs.values() if r["method"] == "none"), None)
    fig, axes = plt.subplots(len(metrics), max(1, len(methods)), figsize=(3.4 * max(1, len(methods)), 2.6 * len(metrics)),
                             squeeze=False)
    for j, method in enumerate(methods):
        points = sorted((r for r in runs.values() if r["method"] == method), key=lambda r: r["strength"] or 0)
        color, marker = METHOD_STYLE[method]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            pts = [(p["strength"], *p[metric]) for p in points if metric in p]
            if pts:
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                err = [[max(0, p[1] - p[2]) if p[2] is not None else 0 for p in pts],
                       [max(0, p[3] - p[1]) if p[3] is not None else 0 for p in pts]]
                ax.errorbar(xs, ys, yerr=err, color=color, marker=marker, capsize=3)
            if baseline and metric in baseline:
                ax.axhline(baseline[metric][0], color="k", ls="--", lw=1, label="no steering")
            if i == 0:
                ax.set_title(method.replace("_", " "))
            if j == 0:
                ax.set_ylabel(LABELS[metric], fontsize=8)
            if i == len(metrics) - 1:
                ax.set_xlabel("clamp value" if "sae" in method else "strength (x direction)")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points for (low over-refusal x, high unsafe refusal y), sorted by x."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Coherent refusal against over-refusal, one colour and one Pareto front per family
    (SAE clamp, SAE-guided specs gated or not, CAA, DiffMean, ...); marker size = capability."""
    runs = by_run(rows)
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    caps = [r["capability"][0] for r in runs.values() if "capability" in r]
    # Coherent refusal where the runs have it: a broken answer that trips the judge is no refusal.
    y_metric = ("unsafe_coherent_refusal" if any("unsafe_coherent_refusal" in r for r in runs.values())
                else "unsafe_refusal")
    by_family: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, r in runs.items():
        if y_metric not in r or "safe_over_refusal" not in r:
            continue
        x, y = r["safe_over_refusal"][0], r[y_metric][0]
        by_family[r["family"]].append((x, y))
        color, marker = FAMILY_STYLE.get(r["family"], ("gray", "o"))
        size = 40 + 260 * ((r["capability"][0] - min(caps)) / (max(caps) - min(caps) or 1)) if "capability" in r and caps else 60
        ax.scatter([x], [y], s=size, color=color, marker=marker, alpha=0.7, edgecolor="k", lw=0.5)
        label = "none" if r["method"] == "none" else (name if r["method"] == "spec" else f"{r['strength']:g}")
        ax.annotate(label, (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
    for family, pts in by_family.items():
        color, marker = FAMILY_STYLE.get(family, ("gray", "o"))
        front = pareto_front(pts)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], ls=":", color=color, lw=1.2)
        ax.scatter([], [], color=color, marker=marker, label=FAMILY_LABELS.get(family, family))
    ax.set_xlabel("over-refusal on safe prompts ↓")
    ax.set_ylabel(LABELS[y_metric])
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if by_family:   # a sweep without safe prompts has no over-refusal to place its points by
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Safety vs over-refusal, a Pareto front per method (marker size = capability)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
