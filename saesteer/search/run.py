"""`saesteer search`: find the steering setting that best meets an objective, by successive halving.

Every candidate intervention answers a few search prompts (half unsafe, half safe); each is
scored with no gate and behind every gate at every calibrated threshold (free: see
`objective.combine`); the best third of the candidates, by their best setting, answer more
prompts at the next rung, until the last rung picks the winner. Early rungs screen with ceilings
one prompt looser (`Objective.screening`); the last holds them exactly. Only the search prompts (a
train split) and the calibration prompts are read; reporting is left to `eval` and `sweep` on
disjoint test prompts. Answers are written row by row, so a killed search continues where it
stopped, and under `torchrun` each rank answers its share of the candidates.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError, at_least
from saesteer.evaluate.distributed import barrier, current_shard
from saesteer.evaluate.refusal import answer_each
from saesteer.files import JsonlAppender, ensure_dir, read_json, read_jsonl, write_json, write_text
from saesteer.generate import EVAL_BATCH, GenerationConfig
from saesteer.models import ChatModel, PromptLike
from saesteer.search.candidates import Candidate, CandidateGrid, Discovery, build_candidates
from saesteer.search.gates import Gate, GatePrompts, check_gate_names, load_gates
from saesteer.search.objective import Objective, PointMetrics, combine, pareto_front
from saesteer.steer import Steering

NONE = "none"
CHOICES = ("sae", "all_sae", "any")


@dataclass
class SearchConfig:
    discovery: str
    """A `saesteer discover` folder: the SAE, its causal latents and its detectors."""
    grid: CandidateGrid = field(default_factory=CandidateGrid)
    gates: tuple[str, ...] = ("none", "sae_probe", "probe")
    target_fprs: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    """Gate thresholds: flag at most this share of the calibration prompts."""
    objective: Objective = field(default_factory=Objective)
    unsafe: str = "bundled:harmful@train"
    safe: str = "bundled:harmless@train,bundled:borderline@train"
    calibration: str = "bundled:harmless@train,bundled:borderline@train"
    """Safe prompts that set the gate thresholds."""
    calibration_limit: int | None = 200
    """At most this many calibration prompts per dataset (a seeded sample)."""
    capability: str = "bundled:mc"
    """Multiple-choice questions the gate should leave alone: every second one joins the
    calibration prompts, the gate's firing rate on the rest is a constraint."""
    capability_limit: int | None = None
    """At most this many capability questions (a seeded sample)."""
    capability_shots: int = 5
    """Each capability question comes after this many answered ones, as in five-shot MMLU, whose
    exemplars can trip a gate that one question does not (0: the bare question)."""
    wrap_attacks: str = "prefix_injection,evil_confidant,manyshot-4"
    """Jailbreak templates (`saesteer eval attacks` names) wrapped round unsafe search prompts: the
    share of them a gate still fires on is reported, and `objective.min_wrapped_steered` can
    require it ("": none)."""
    wrap_prompts: int = 24
    """Unsafe search prompts wrapped in each template."""
    contrast_prompts: int = 32
    """Search prompts whose refusal/compliance replies define the CAA and SAE-add vectors."""
    rungs: tuple[int, ...] = (8, 16, 32)
    """Prompts per label answered at each rung."""
    keep: float = 1 / 3
    """Share of candidates promoted to the next rung."""
    choose_from: str = "sae"
    """What best.yaml may be: `sae`, steering with SAE latents or SAE-derived vectors behind any
    gate; `all_sae`, the gate too is SAE-based (or absent); `any`, CAA included."""
    max_new_tokens: int = 48
    batch_size: int = EVAL_BATCH
    judge: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(1, contrast_prompts=self.contrast_prompts, max_new_tokens=self.max_new_tokens,
                 batch_size=self.batch_size, calibration_limit=self.calibration_limit, wrap_prompts=self.wrap_prompts,
                 capability_limit=self.capability_limit)
        at_least(0, capability_shots=self.capability_shots)
        if not self.rungs or any(b <= a for a, b in zip(self.rungs, self.rungs[1:])) or self.rungs[0] < 1:
            raise SaesteerError(f"--rungs must be increasing prompt counts >= 1, got {','.join(map(str, self.rungs))}")
        if not 0 < self.keep <= 1:
            raise SaesteerError(f"--keep must be a share in (0, 1], got {self.keep}")
        if self.choose_from not in CHOICES:
            raise SaesteerError(f"--choose-from must be {', '.join(CHOICES)}; got {self.choose_from!r}")
        for fpr in self.target_fprs:
            if not 0 <= fpr < 1:
                raise SaesteerError(f"--target-fprs must be shares in [0, 1), got {fpr}")
        check_gate_names(self.gates)
        if self.wrap_attacks.strip():
            from saesteer.attacks.catalog import resolve_attacks

            resolve_attacks(self.wrap_attacks)    # an unknown name fails before the model loads


@dataclass
class Point:
    candidate: Candidate
    gate: Gate | None
    target_fpr: float | None
    threshold: float | None
    metrics: PointMetrics

    @property
    def name(self) -> str:
        return self.candidate.name + ("" if self.gate is None else f"+{self.gate.name}@{self.target_fpr:g}")

    @property
    def sae_based(self) -> bool:
        """The steering is SAE latents or an SAE-derived vector (the gate may be any detector)."""
        return self.candidate.sae_based

    @property
    def all_sae(self) -> bool:
        """SAE steering behind an SAE detector, or behind none."""
        return self.candidate.sae_based and (self.gate is None or self.gate.sae_based)

    def eligible(self, choose_from: str) -> bool:
        return {"sae": self.sae_based, "all_sae": self.all_sae, "any": True}[choose_from]

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.describe(), "name": self.name, "candidate": self.candidate.name, "gate": self.gate.name if self.gate else None,
                "target_fpr": self.target_fpr, "threshold": self.threshold, "sae_based": self.sae_based,
                "all_sae": self.all_sae,
                "metrics": self.metrics.to_dict()}


def _prompts(config: SearchConfig, discovery: Discovery) -> tuple[list[Record], list[Record]]:
    """Unsafe and safe search prompts, shuffled. Safe prompts the detectors were fitted on are
    left out: over-refusal measured on them would flatter every gate."""
    unsafe = [r for r in load_records(config.unsafe) if r.label != "safe"]
    safe = [r for r in load_records(config.safe) if r.label != "unsafe" and not discovery.fitted_on(r.text)]
    if not unsafe or not safe:
        raise SaesteerError("a search needs unsafe prompts (--unsafe) and safe prompts (--safe) that discovery's "
                            "detectors were not fitted on")
    ids = [r.id for r in unsafe + safe]
    if len(set(ids)) != len(ids):
        raise SaesteerError("the search prompts repeat an id; give --unsafe and --safe sets whose ids are distinct")
    for records in (unsafe, safe):
        random.Random(config.seed).shuffle(records)
    return unsafe, safe


def answer(lm: ChatModel, candidates: list[Candidate | None], records: list[Record], out: Path,
           config: SearchConfig, judge: Any, bar: tqdm) -> None:
    """Answer and judge, for each candidate (None: unsteered), the records not yet in its answer
    file (one JSON line each, so a rerun resumes). The candidates' prompts share batches, each
    spec steering only its own rows: one wide batch instead of one narrow batch per candidate."""
    jobs: list[tuple[Candidate | None, Path, list[Record], str | None]] = []
    for candidate in candidates:
        path = _rows_path(out, candidate)
        spec_hash = candidate.spec.hash() if candidate is not None else None
        rows = read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []
        if any(row.get("spec_hash") != spec_hash for row in rows):
            raise SaesteerError(f"{path} holds answers of another {path.stem} spec (the discovery or its SAE "
                                "changed); delete that file or use a new --out")
        done = {row["id"] for row in rows}
        todo = [r for r in records if r.id not in done]
        bar.update(len(records) - len(todo))
        if todo:
            jobs.append((candidate, path, todo, spec_hash))
    if not jobs:
        return
    steerings = [Steering(lm, c.spec) if c is not None else None for c, _, _, _ in jobs]
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(JsonlAppender(path)) for _, path, _, _ in jobs]
        for j, row in answer_each(lm, [(s, todo) for s, (_, _, todo, _) in zip(steerings, jobs)], gen, judge, True,
                                  config.batch_size * 2, on_done=lambda *_: bar.update(1)):
            writers[j].write({**row, "spec_hash": jobs[j][3]})


def score(candidate: Candidate, rows: dict[str, dict], unsteered: dict[str, dict], labels: dict[str, str],
          gates: list[Gate], config: SearchConfig) -> list[Point]:
    """The candidate with no gate and behind every gate at every calibrated threshold."""
    points = []
    if NONE in config.gates:
        everything = [True] * max((len(g.wrapped) for g in gates), default=0)   # ungated: steers every prompt
        points.append(Point(candidate, None, None, None, combine(rows, unsteered, None, labels, None, everything)))
    for gate in gates:
        for fpr, thr in gate.thresholds(config.target_fprs):
            flagged = gate.fires(thr)
            fires = {i: flagged[i] for i in labels}
            points.append(Point(candidate, gate, fpr, thr, combine(rows, unsteered, fires, labels,
                                                                   gate.capability_fires(thr), gate.wrapped_fires(thr))))
    return points


def _gate_prompts(lm: ChatModel, config: SearchConfig, pool: dict[str, Record], calibration: list[PromptLike],
                  unsafe: list[Record]) -> GatePrompts:
    """The prompts every gate is scored on: the search prompts, the safe calibration prompts, the
    capability questions (few-shot, half of them for calibration) and wrapped unsafe prompts, those
    of the last two that fit the model's context."""
    from saesteer.attacks.base import fits
    from saesteer.attacks.catalog import resolve_attacks
    from saesteer.evaluate.capability_tasks import few_shot_conversations

    one_token = GenerationConfig(max_new_tokens=1)
    records = load_records(config.capability, limit=config.capability_limit, seed=config.seed) if config.capability else []
    capability: list[PromptLike] = [c for c in (few_shot_conversations(records, config.capability_shots)
                                                if config.capability_shots else [r.prompt for r in records])
                                    if fits(lm, c, one_token)]
    attacks = resolve_attacks(config.wrap_attacks) if config.wrap_attacks.strip() else []
    wrapped: list[PromptLike] = [m for r in unsafe[:config.wrap_prompts] for a in attacks
                                 for m in [a.messages(r.text)] if fits(lm, m, one_token)]
    return GatePrompts({i: r.prompt for i, r in pool.items()}, calibration, capability[1::2], capability[0::2],
                       wrapped)


def promote(ranked: list[tuple[Candidate, list[Point]]], keep: float, exact: Objective | None = None) -> list[Candidate]:
    """The best `keep` share of the ranked candidates, plus the best of every method not among them,
    so each method reaches the last rung (its front is reported, and `best.yaml` may have to be
    SAE-based even when CAA leads). Ranked by screening ceilings, it also keeps the best candidate
    by the `exact` ones, so one that screening let through beside it cannot leave the last rung
    with nothing that meets them."""
    chosen = [c for c, _ in ranked[:max(1, math.ceil(len(ranked) * keep))]]
    for cand, _ in ranked:
        if all(c.method != cand.method for c in chosen):
            chosen.append(cand)
    if exact is not None and ranked:
        best = max(ranked, key=lambda cp: max(exact.key(p.metrics) for p in cp[1]))[0]
        if best not in chosen:
            chosen.append(best)
    return chosen


def run_search(lm: ChatModel, out: str | Path, config: SearchConfig, *, allow_unmet: bool = False,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a search; writes search.json, points.jsonl and best.yaml under `out`."""
    from saesteer.judge import get_judge
    from saesteer.sae import load_sae
    from saesteer.steer.sae_vectors import latent_contrast

    out = Path(out)
    shard = current_shard()
    settings = {"answers": _settings(config), "model": lm.model_id}
    previous = out / "search_settings.json"
    if previous.exists() and read_json(previous) != settings:
        raise SaesteerError(f"{out} holds a search whose answers were made with other prompts or generation "
                            "settings; use a new --out or delete it (the objective, gates and rungs may change "
                            "on a rerun)")
    discovery = Discovery.load(config.discovery)
    if "sae_clamp" in config.grid.methods:
        discovery.causal_features(config.grid.clamp_features)   # fails before the model runs
    sae = load_sae(discovery.sae_ref.path).to(lm.device)
    unsafe, safe = _prompts(config, discovery)
    judge = get_judge(config.judge)
    ensure_dir(out)     # only once the discovery, judge and prompts are known good: no empty folder
    if shard.is_main:
        write_json(previous, settings)
    contrast_prompts = [r.text for r in (unsafe[:config.contrast_prompts // 2] + safe[:config.contrast_prompts // 2])]
    contrast = latent_contrast(lm, sae, discovery.hook, contrast_prompts, progress="SAE refusal contrast")
    candidates = build_candidates(lm, sae, discovery, contrast, config.grid, out / "specs", contrast_prompts, say)
    top = config.rungs[-1]
    pool = {r.id: r for r in unsafe[:top] + safe[:top]}
    calibration = [r.prompt for r in load_records(config.calibration, limit=config.calibration_limit, seed=config.seed)
                   if r.label != "unsafe" and r.id not in pool and not discovery.fitted_on(r.text)]
    gated = any(g != NONE for g in config.gates)   # ungated only: no prompt needs a detector score
    if gated and not calibration:
        raise SaesteerError("the calibration set has no safe prompts outside the search prompts and the "
                            "detectors' fitting prompts; give --calibration other safe prompts")
    gates = load_gates(lm, Path(config.discovery), config.gates, _gate_prompts(lm, config, pool, calibration, unsafe),
                       ensure_dir(out / "gates"), batch_size=config.batch_size) if gated else []
    alive, history = list(candidates), []
    for rung, n in enumerate(config.rungs):
        records = unsafe[:n] + safe[:n]
        labels = {**{r.id: "unsafe" for r in unsafe[:n]}, **{r.id: "safe" for r in safe[:n]}}
        todo: list[Candidate | None] = [None, *alive]
        say(f"[search] rung {rung + 1}/{len(config.rungs)}: {len(alive)} candidates x {len(records)} prompts")
        with tqdm(total=len(records) * len(todo), unit="answer", desc=f"search rung {rung + 1}") as bar:
            answer(lm, shard.take(todo), records, out, config, judge, bar)
        barrier(shard)
        unsteered = _rows(out, None)
        baseline = combine(unsteered, unsteered, None, labels)
        objective = config.objective.above(baseline)
        last = rung == len(config.rungs) - 1
        rank_by = objective if last else objective.screening(len(unsafe[:n]), len(safe[:n]))
        ranked: list[tuple[Candidate, list[Point]]] = []
        for cand in alive:
            points = score(cand, _rows(out, cand), unsteered, labels, gates, config)
            ranked.append((cand, sorted(points, key=lambda p: rank_by.key(p.metrics), reverse=True)))
        ranked.sort(key=lambda cp: rank_by.key(cp[1][0].metrics), reverse=True)
        history.append({"rung": rung + 1, "prompts_per_label": n,
                        "points": [p.to_dict() for _, pts in ranked for p in pts]})
        if not last:
            alive = promote(ranked, config.keep, objective)
    final = [p for _, pts in ranked for p in pts]
    final.append(Point(Candidate(NONE, NONE, 0.0, None), None, None, None, baseline))  # type: ignore[arg-type]
    return _finish(out, config, objective, final, history, gates, allow_unmet, shard.is_main, say)


def _finish(out: Path, config: SearchConfig, objective: Objective, final: list[Point], history: list[dict],
            gates: list[Gate], allow_unmet: bool, is_main: bool, say: Callable[[str], None]) -> dict[str, Any]:
    steered = [p for p in final if p.candidate.method != NONE]
    eligible = [p for p in steered if p.eligible(config.choose_from)]
    if not eligible:
        raise SaesteerError(f"no candidate of the kind --choose-from {config.choose_from} asks for reached the last "
                            "rung; search sae_add or sae_clamp, add an SAE gate, or use --choose-from any")
    best = max(eligible, key=lambda p: objective.key(p.metrics))
    picks = {kind: max(ps, key=lambda p: objective.key(p.metrics))
             for kind in CHOICES for ps in [[p for p in steered if p.eligible(kind)]] if ps}
    met = objective.violation(best.metrics) == 0
    silent = [g.name for g in gates if all(not any(g.fires(t).values()) for _, t in g.thresholds(config.target_fprs))]
    result = {"objective": asdict(config.objective), "ceilings": asdict(objective), "objective_met": met, "choose_from": config.choose_from,
              "best": best.to_dict(), "best_of": {kind: p.to_dict() for kind, p in picks.items()},
              "best_by_method": {m: max(ps, key=lambda p: objective.key(p.metrics)).to_dict()
                                 for m in sorted({p.candidate.method for p in final})
                                 for ps in [[p for p in final if p.candidate.method == m]]},
              "front": [p for p in pareto_front([p.to_dict() for p in final])],
              "silent_gates": silent, "rungs": [{k: v for k, v in h.items() if k != "points"} for h in history]}
    if is_main:
        write_text(out / "points.jsonl", "".join(json.dumps({"rung": h["rung"], **p}) + "\n"
                                                 for h in history for p in h["points"]))
        write_json(out / "search.json", result)
    for name in silent:
        say(f"[search] the {name} gate flags none of the search prompts at any calibrated threshold: it adds nothing")
    if not met and not allow_unmet:
        m = best.metrics
        raise SaesteerError(f"no setting meets the objective ({objective.describe()}); the closest, {best.name}, "
                            f"refuses {m.over_refusal:.0%} of safe prompts with {m.broken:.0%} broken answers. Every "
                            f"point is in {out / 'points.jsonl'}; relax the objective or widen the grid")
    if is_main:
        _save(best, out / "best.yaml", config, objective)
        by_name = {p.name: p for p in steered}
        for entry in result["front"]:
            if entry["name"] in by_name:
                _save(by_name[entry["name"]], ensure_dir(out / "front") / f"{entry['name']}.yaml", config, objective)
        for kind, point in picks.items():
            if point is not best:
                _save(point, out / f"best_{kind}.yaml", config, objective)
    return result


def _save(point: Point, path: Path, config: SearchConfig, objective: Objective) -> None:
    """The point's spec, with its gate's condition at the chosen threshold."""
    spec = copy.deepcopy(point.candidate.spec)
    if point.gate is not None:
        spec.condition = point.gate.condition_at(point.threshold, point.target_fpr, config.calibration)
    met = objective.violation(point.metrics) == 0
    spec.name = point.name if path.parent.name == "front" else f"{path.stem}-{point.name}"
    spec.description = (f"chosen by saesteer search ({'meets' if met else 'does NOT meet'} {objective.describe()}) "
                        f"on {config.unsafe} / {config.safe}")
    spec.save(path)


def _rows_path(out: Path, candidate: Candidate | None) -> Path:
    return ensure_dir(out / "answers") / f"{candidate.name if candidate else NONE}.jsonl"


def _rows(out: Path, candidate: Candidate | None) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(_rows_path(out, candidate), tolerate_torn_tail=True)}


ANSWER_SETTINGS = ("discovery", "unsafe", "safe", "contrast_prompts", "max_new_tokens", "judge", "seed")
"""What the stored answers depend on; everything else (objective, gates, rungs, grid) may change on
a rerun, which then reuses every answer it can."""


def _settings(config: SearchConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ANSWER_SETTINGS}
