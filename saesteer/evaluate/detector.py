"""How often a conditional spec's detector fires, per dataset: its true-positive rate on unsafe
prompts, its false-positive rate on safe ones (XSTest safe is the hard case) and on five-shot
capability prompts (MMLU, or offline the bundled questions), where earlier turns can trigger a
detector that reads the whole prompt.

Only the detector runs: each prompt is prefilled once with the spec active (one new token), and
the gate's decision is read, so this costs a fraction of a refusal evaluation.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError
from saesteer.evaluate.capability_tasks import few_shot_conversations, mmlu_gen_conversation
from saesteer.evaluate.stats import rate
from saesteer.generate import GenerationConfig, encode_prompt, generate, length_batches
from saesteer.hooks import StopForward, forward_hooks, run_until_stopped
from saesteer.models import ChatModel, PromptLike
from saesteer.steer import Steering, SteeringSpec


@dataclass
class DetectorEvalConfig:
    datasets: str = "harmbench,advbench,jailbreakbench,strongreject,xstest,alpaca"
    limit: int | None = 50
    five_shot: int = 50
    """Multiple-choice questions asked with five exemplar turns before them (0: none)."""
    batch_size: int = 16
    seed: int = 0
    five_shot_from: str = "auto"
    """`mmlu`, `bundled` (saesteer's 80 questions, offline) or `auto`: MMLU where the data
    directory holds it, else the bundled set."""

    def __post_init__(self) -> None:
        if self.five_shot_from not in FIVE_SHOT_SOURCES:
            raise SaesteerError(f"unknown five-shot source {self.five_shot_from!r}; use {', '.join(FIVE_SHOT_SOURCES)}")

    def five_shot_source(self) -> str:
        if self.five_shot_from != "auto":
            return self.five_shot_from
        from saesteer.data import data_dir

        local = data_dir()
        return "mmlu" if local is not None and (local / "mmlu").is_dir() else "bundled"


FIVE_SHOT_SOURCES = ("auto", "mmlu", "bundled")


def five_shot_bundled(n: int, seed: int) -> list[tuple[str, PromptLike]]:
    """(id, conversation) of `n` bundled multiple-choice questions, each after five others of its category."""
    records = load_records("bundled:mc")
    conversations = few_shot_conversations(records, 5)
    picked = sorted(random.Random(seed).sample(range(len(records)), min(n, len(records))))
    return [(records[i].id, conversations[i]) for i in picked]


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
                    batch_size: int = 16, system: str | None = None, progress: bool | str = False) -> list[float]:
    """The pooled detector score of each prompt (see `detectors_scores`)."""
    return detectors_scores(lm, [steering], prompts, batch_size=batch_size, system=system, progress=progress)[0]


DETECTOR_BATCH_TOKENS = 2048
"""Padded prompt tokens per detector batch. On 2 cores the demo search's 171 gate prompts (38,000
tokens, 43 to 692 each) took 64-74 s in batches of 64 rows, a third of it padding; with at most
2,048 tokens per batch 36-39 s, 4,096 40-46 s, 16,384 50-65 s (alternated, same scores to 4e-6)."""


def gate_decisions(lm: ChatModel, steering: Steering, prompts: list[PromptLike], *, batch_size: int = 16,
                   system: str | None = None, progress: bool | str = False) -> list[bool]:
    """Whether the spec's gate steers each prompt (the decision the steered run makes)."""
    scores = detector_scores(lm, steering, prompts, batch_size=batch_size, system=system, progress=progress)
    return [bool(d) for d in steering.gate.condition.decide(torch.tensor(scores)).tolist()]  # type: ignore[union-attr]


def detectors_scores(lm: ChatModel, steerings: Sequence[Steering | SteeringSpec | str], prompts: list[PromptLike], *,
                     batch_size: int = 16, system: str | None = None,
                     progress: bool | str = False) -> list[list[float]]:
    """Each spec's pooled detector score of each prompt, from one forward pass per batch.

    Only the detectors run: the pass stops after the deepest detector's layer, and prompts of
    similar length share a batch. A gate reads the unsteered residual stream in a steered run too
    (its hook comes before any steering hook, or it reads a pre-pass with steering paused), so
    these are the scores the steered model decides by.
    """
    gates = []
    for steering in steerings:
        steering = steering if isinstance(steering, Steering) else Steering(lm, steering)
        if steering.gate is None:
            raise SaesteerError("this spec has no condition: there is no detector to evaluate")
        gates.append(steering.gate)
    deepest = max(gates, key=lambda g: g.condition.point.layer).condition.point.module

    def stop(*_: Any) -> None:
        raise StopForward

    hooks = [(g.condition.point.module, g.detect_hook()) for g in gates] + [(deepest, stop)]
    gen = GenerationConfig(max_new_tokens=1, batch_size=batch_size, system=system)
    lengths = [len(encode_prompt(lm, p, system=system)) for p in prompts]
    scores: list[dict[int, float]] = [{} for _ in gates]
    bar = tqdm(total=len(prompts), unit="prompt", desc=progress if isinstance(progress, str) else "detector",
               disable=not progress, leave=False)
    for chunk in length_batches(lengths, batch_size, DETECTOR_BATCH_TOKENS):
        for gate in gates:
            gate.scores.clear()
        with forward_hooks(hooks):
            run_until_stopped(lambda: generate(lm, [prompts[i] for i in chunk], gen))
        for gate, out in zip(gates, scores):
            if len(gate.scores) != len(chunk):
                raise SaesteerError("a detector did not read every prompt of its batch")
            out.update({i: gate.scores[row] for row, i in enumerate(chunk)})
        bar.update(len(chunk))
    bar.close()
    return [[out[i] for i in range(len(prompts))] for out in scores]


def detector_rates(lm: ChatModel, spec: SteeringSpec | str, config: DetectorEvalConfig,
                   *, progress: bool = True) -> dict[str, Any]:
    """Firing rate (with a 95% interval) per dataset and label, and on five-shot MMLU prompts."""
    steering = Steering(lm, spec)
    if steering.gate is None:
        raise SaesteerError("this spec has no condition: there is no detector to evaluate")
    items: list[tuple[str, str, PromptLike]] = []      # (group, id, prompt)
    for r in load_records(config.datasets, limit=config.limit, seed=config.seed):
        items.append((f"{r.source}:{r.label or 'unlabelled'}", r.id, r.prompt))
    source = config.five_shot_source() if config.five_shot else None
    if source is not None:
        make = five_shot_mmlu if source == "mmlu" else five_shot_bundled
        items += [(f"{source}_5shot:safe", i, conv) for i, conv in make(config.five_shot, config.seed)]
    fired: dict[str, list[bool]] = defaultdict(list)
    decided = gate_decisions(lm, steering, [p for _, _, p in items], batch_size=config.batch_size, progress=progress)
    for (group, _, _), steer in zip(items, decided):
        fired[group].append(steer)
    groups = {g: rate(sum(v), len(v)) for g, v in sorted(fired.items())}
    unsafe = [x for g, v in fired.items() if g.endswith(":unsafe") for x in v]
    safe = [x for g, v in fired.items() if g.endswith(":safe") and "_5shot:" not in g for x in v]
    return {"spec_hash": steering.hash, "detector": steering.spec.condition.detector,
            "true_positive_rate": rate(sum(unsafe), len(unsafe)) if unsafe else None,
            "false_positive_rate": rate(sum(safe), len(safe)) if safe else None, "groups": groups,
            "five_shot_from": source}
