"""Summaries of capability rows: per-task accuracy (Wilson 95% intervals) or the MC2 mean (normal
interval), letter histograms, refusals of `mmlu_gen`, and how generations finished."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from saesteer.evaluate import capability_tasks as fmt
from saesteer.evaluate.capability_tasks import TASKS, task_format
from saesteer.evaluate.stats import rate


def mean_interval(values: list[float], z: float = 1.96) -> dict[str, Any]:
    """Mean with a normal-approximation 95% interval (clipped to [0, 1])."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "n": 0, "sd": float("nan"), "ci95": [0.0, 1.0]}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "n": 1, "sd": float("nan"), "ci95": [0.0, 1.0]}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return {"mean": mean, "n": n, "sd": sd, "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


def _histogram(letters: list[str], keys: tuple[str, ...]) -> dict[str, Any]:
    counts = Counter(letters)
    return {k: rate(counts.get(k, 0), len(letters)) for k in keys}


def summarise_task(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    s: dict[str, Any] = {"description": TASKS.get(task, task), "n": n}
    task = task_format(task)
    if task == "truthfulqa_mc2":
        s["mc2"] = mean_interval([row["score"] for row in rows])
        s["score"] = {"value": s["mc2"]["mean"], "ci95": s["mc2"]["ci95"], "n": n, "metric": "mc2"}
    else:
        acc = rate(sum(bool(row["correct"]) for row in rows), n)
        s["accuracy"] = acc
        s["score"] = {"value": acc["rate"], "ci95": acc["ci95"], "n": n, "metric": "accuracy"}
    if task.startswith("mmlu"):
        keys = fmt.LETTERS + ((fmt.UNK,) if task == "mmlu_gen" else ())
        s["letters"] = _histogram([row["pred"] for row in rows], keys)
        s["gold_letters"] = _histogram([row["gold"] for row in rows], fmt.LETTERS)
        subjects: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            subjects[row.get("subject") or ""].append(row)
        s["subjects"] = {k: rate(sum(bool(r["correct"]) for r in v), len(v)) for k, v in sorted(subjects.items())}
    if task == "mmlu_gen" or task.startswith("gsm8k"):
        s["finish_reasons"] = dict(Counter(row["finish_reason"] for row in rows))
        s["mean_new_tokens"] = sum(row["new_tokens"] for row in rows) / n if n else float("nan")
    if task == "mmlu_gen":
        judged = [row for row in rows if "refusal" in row]
        s["refusal"] = rate(sum(row["refusal"] for row in judged), len(judged)) if judged else None
    if task.startswith("gsm8k"):
        s["strict_accuracy"] = rate(sum(bool(row["correct_strict"]) for row in rows), n)
        s["no_number"] = sum(row["pred"] is None for row in rows)
    if any("steered" in row for row in rows):
        s["steered"] = sum(bool(row.get("steered")) for row in rows)
    return s


def summarise(rows: list[dict[str, Any]], expected: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per-task metrics with 95% intervals (Wilson for accuracies, normal for the MC2 mean)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    order = list(expected or {}) + sorted(t for t in by_task if t not in (expected or {}))
    tasks = {}
    for task in order:
        if not by_task.get(task):
            continue
        s = summarise_task(task, by_task[task])
        if expected is not None and task in expected:
            s["complete"] = len(by_task[task]) >= expected[task]
        tasks[task] = s
    return {"tasks": tasks, "scores": {t: s["score"] for t, s in tasks.items()}}
