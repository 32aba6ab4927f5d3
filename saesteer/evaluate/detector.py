"""How often a conditional spec's detector fires, per dataset: its true-positive rate on unsafe
prompts, its false-positive rate on safe ones (XSTest safe is the hard case) and on five-shot
capability prompts, where earlier turns can trigger a detector that reads the whole prompt.

Only the detector runs: each prompt is prefilled once with the spec active (one new token), and
the gate's decision is read, so this costs a fraction of a refusal evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError
from saesteer.evaluate.capability_tasks import mmlu_gen_conversation
from saesteer.evaluate.stats import rate
from saesteer.generate import GenerationConfig, generate
from saesteer.models import ChatModel, PromptLike
from saesteer.steer import Steering, SteeringSpec


@dataclass
class DetectorEvalConfig:
    datasets: str = "harmbench,advbench,jailbreakbench,strongreject,xstest,alpaca"
    limit: int | None = 50
    five_shot: int = 50
    """MMLU questions asked with five exemplar turns before them (0: none)."""
    batch_size: int = 16
    seed: int = 0


def five_shot_mmlu(n: int, seed: int) -> list[tuple[str, PromptLike]]:
    """(id, conversation) of `n` MMLU test questions, each after its subject's five dev exemplars."""
    dev: dict[str, list[Record]] = defaultdict(list)
    for r in load_records("mmlu:dev"):
        dev[r.category or ""].append(r)
    out = []
    for r in load_records("mmlu", limit=n, seed=seed):
        shots = dev.get(r.category or "", [])[:5]
        out.append((r.id, mmlu_gen_conversation(r.category or "", shots, r)))
    return out


def detector_scores(lm: ChatModel, steering: Steering | SteeringSpec | str, prompts: list[PromptLike], *,
                    batch_size: int = 16, progress: bool | str = False) -> list[float]:
    """The pooled detector score of each prompt (each is prefilled once, one new token)."""
    steering = steering if isinstance(steering, Steering) else Steering(lm, steering)
    if steering.gate is None:
        raise SaesteerError("this spec has no condition: there is no detector to evaluate")
    gen = GenerationConfig(max_new_tokens=1, batch_size=batch_size)
    scores: list[float] = []
    bar = tqdm(total=len(prompts), unit="prompt", desc=progress if isinstance(progress, str) else "detector",
               disable=not progress, leave=False)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        with steering.active():
            generate(lm, chunk, gen)
            scores += [steering.gate.scores[row] for row in range(len(chunk))]
        bar.update(len(chunk))
    bar.close()
    return scores


def detector_rates(lm: ChatModel, spec: SteeringSpec | str, config: DetectorEvalConfig,
                   *, progress: bool = True) -> dict[str, Any]:
    """Firing rate (with a 95% interval) per dataset and label, and on five-shot MMLU prompts."""
    steering = Steering(lm, spec)
    if steering.gate is None:
        raise SaesteerError("this spec has no condition: there is no detector to evaluate")
    items: list[tuple[str, str, PromptLike]] = []      # (group, id, prompt)
    for r in load_records(config.datasets, limit=config.limit, seed=config.seed):
        items.append((f"{r.source}:{r.label or 'unlabelled'}", r.id, r.prompt))
    if config.five_shot:
        items += [("mmlu_5shot:safe", i, conv) for i, conv in five_shot_mmlu(config.five_shot, config.seed)]
    fired: dict[str, list[bool]] = defaultdict(list)
    scores = detector_scores(lm, steering, [p for _, _, p in items], batch_size=config.batch_size, progress=progress)
    decided = steering.gate.condition.decide(torch.tensor(scores)).tolist()
    for (group, _, _), steer in zip(items, decided):
        fired[group].append(bool(steer))
    groups = {g: rate(sum(v), len(v)) for g, v in sorted(fired.items())}
    unsafe = [x for g, v in fired.items() if g.endswith(":unsafe") for x in v]
    safe = [x for g, v in fired.items() if g.endswith(":safe") and not g.startswith("mmlu_5shot") for x in v]
    return {"spec_hash": steering.hash, "detector": steering.spec.condition.detector,
            "true_positive_rate": rate(sum(unsafe), len(unsafe)) if unsafe else None,
            "false_positive_rate": rate(sum(safe), len(safe)) if safe else None, "groups": groups}
