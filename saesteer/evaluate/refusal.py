"""Refusal and over-refusal of a (steered) model on labelled prompt sets.

Writes `responses.jsonl` (one row per prompt: response, judgement, steering spec hash) and
`summary.json` (refusal rate on unsafe prompts, over-refusal on safe prompts, per dataset and
category, with 95% Wilson intervals). A rerun skips finished rows; under `torchrun` each rank
takes every world-th prompt and rank 0 merges the shards.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError, at_least
from saesteer.evaluate.distributed import Shard, barrier, current_shard
from saesteer.evaluate.rundir import finished_rows, is_unsteered_twin, previous_run
from saesteer.evaluate.stats import rate
from saesteer.files import JsonlAppender, ensure_dir, read_jsonl, write_json
from saesteer.generate import EVAL_BATCH, GenerationConfig, OnDone, generate
from saesteer.models import ChatModel
from saesteer.steer import RowSteering, Steering, SteeringSpec


@dataclass
class RefusalEvalConfig:
    datasets: str = "bundled"
    """Comma-separated dataset names (records need a safe/unsafe label)."""
    limit: int | None = None
    """At most this many prompts per dataset (a seeded sample)."""
    max_new_tokens: int = 256
    batch_size: int = EVAL_BATCH
    early_stop: bool = True
    """Stop a row as soon as the judge's verdict can no longer change."""
    judge: str = "auto"
    system: str | None = None
    seed: int = 0
    chunk: int = 64
    """Prompts generated and written per step (the unit of resumption)."""

    def __post_init__(self) -> None:
        at_least(1, limit=self.limit, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                 chunk=self.chunk)

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to resume into the same folder."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("chunk")
        return d


def _rows_path(out: Path, shard: Shard) -> Path:
    return out / ("responses.jsonl" if shard.world == 1 else f"responses.rank{shard.rank}.jsonl")


@dataclass
class _Run:
    """One refusal run folder, opened: its spec, prompts and the prompts still to answer."""
    out: Path
    steering: Steering | None
    records: list[Record]
    mine: int
    """Prompts this rank answers (all of them outside torchrun)."""
    todo: list[Record]
    path: Path
    run_info: dict[str, Any]

    @property
    def spec_hash(self) -> str | None:
        return self.steering.hash if self.steering else None


def _open(lm: ChatModel, out: str | Path, config: RefusalEvalConfig, spec: SteeringSpec | str | Path | None,
          shard: Shard, ungated: bool = False) -> _Run:
    steering = Steering(lm, spec) if spec is not None else None   # checks before any generation
    if ungated and steering is not None and steering.gate is not None:
        raise SaesteerError(f"{out}: answer_together takes ungated specs only (a gate decides its rows itself); "
                            "evaluate a gated spec with evaluate_refusal")
    records = [r for r in load_records(config.datasets, limit=config.limit, seed=config.seed)]
    if not records:
        raise SaesteerError(f"no prompts in {config.datasets}")
    out = ensure_dir(out)     # only once the spec, judge and prompts are known good: no empty folder
    run_info = {"model": lm.describe(), "spec_hash": steering.hash if steering else None,
                "spec": steering.spec.to_dict() if steering else None, "settings": config.settings()}
    if previous_run(out, run_info, lm.model_id) is None and shard.is_main:
        write_json(out / "run.json", run_info)
    path = _rows_path(out, shard)
    done = {row["id"] for row in finished_rows(path)}
    mine = shard.take(records)
    return _Run(out, steering, records, len(mine), [r for r in mine if r.id not in done], path, run_info)


def evaluate_refusal(lm: ChatModel, out: str | Path, config: RefusalEvalConfig,
                     spec: SteeringSpec | str | Path | None = None, *, progress: bool = True,
                     unsteered: str | Path | None = None) -> dict[str, Any]:
    """Answer and judge every prompt of `config.datasets` under `spec` (None: unsteered).

    `unsteered` is the folder of an unsteered run of the same prompts and settings. A gated spec
    then generates only the prompts its detector flags and takes the others' answers from that
    run: the gate leaves them unsteered, and a prompt's greedy answer does not depend on its batch.
    """
    from saesteer.judge import get_judge

    shard = current_shard()
    judge = get_judge(config.judge)
    run = _open(lm, out, config, spec, shard)
    steering, spec_hash, todo = run.steering, run.spec_hash, run.todo
    gen_cfg = _generation(config)
    bar = tqdm(total=run.mine, initial=run.mine - len(todo), unit="prompt", disable=not progress,
               desc=f"eval refusal{' rank ' + str(shard.rank) if shard.world > 1 else ''}")
    started = time.time()
    reused = _unsteered_answers(lm, steering, todo, config, unsteered, run.run_info)
    with JsonlAppender(run.path) as writer:
        for row in reused:
            writer.write({**row, "steered": False, "spec_hash": spec_hash})
            bar.update(1)
        done_now = {row["id"] for row in reused}
        todo = [r for r in todo if r.id not in done_now]
        for start in range(0, len(todo), config.chunk):
            chunk = todo[start:start + config.chunk]
            rows = answer_and_judge(lm, chunk, gen_cfg, judge, steering, config.early_stop,
                              on_done=lambda _row, _gen: bar.update(1))
            for row in rows:
                writer.write({**row, "spec_hash": spec_hash})
    bar.close()
    barrier(shard)
    if not shard.is_main:
        return {}
    rows = _merge(run.out, shard, run.records)
    summary = summarise(rows, run.records)
    summary.update({"model": lm.describe(), "spec_hash": spec_hash,
                    "spec_name": steering.spec.name if steering else None,
                    "spec_file": str(spec) if isinstance(spec, (str, Path)) else None, "judge": config.judge,
                    "generation": asdict(gen_cfg), "dataset_spec": config.datasets, "limit": config.limit,
                    "seconds_this_run": round(time.time() - started, 1),
                    "answers_from_unsteered_run": len(reused)})
    write_json(run.out / "summary.json", summary)
    return summary


def answer_together(lm: ChatModel, runs: list[tuple[str | Path, SteeringSpec | str | Path | None]],
                    config: RefusalEvalConfig, *, progress: bool = True) -> None:
    """Answer the unanswered prompts of several ungated runs (folder, spec; None: unsteered) in
    shared batches, each spec steering only its own rows (`RowSteering`), into each run's folder.
    A greedy answer does not depend on its batch, so each row is the one `evaluate_refusal` would
    write; a few wide batches beat one narrow tail per run. `evaluate_refusal` on each folder
    afterwards only summarises."""
    from saesteer.judge import get_judge

    shard = current_shard()
    judge = get_judge(config.judge)
    opened = [_open(lm, out, config, spec, shard, ungated=True) for out, spec in runs]
    todo = sum(len(run.todo) for run in opened)
    if not todo:
        return
    bar = tqdm(total=todo, unit="prompt", disable=not progress, desc=f"eval refusal, {len(runs)} runs together")
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(JsonlAppender(run.path)) for run in opened]
        for j, row in answer_each(lm, [(run.steering, run.todo) for run in opened], _generation(config), judge,
                                  config.early_stop, config.chunk, on_done=lambda _row, _gen: bar.update(1)):
            writers[j].write({**row, "spec_hash": opened[j].spec_hash})
    bar.close()


def answer_each(lm: ChatModel, jobs: list[tuple[Steering | None, list[Record]]], gen_cfg: GenerationConfig,
                judge: Any, early_stop: bool, chunk: int, on_done: OnDone | None = None
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(job index, judged row) for every record of every job, each job's ungated steering (None:
    unsteered) applied to its own rows of shared batches; `chunk` rows are answered per step, so a
    caller that writes the rows as they come can resume."""
    flat = [(j, r) for j, (_, records) in enumerate(jobs) for r in records]
    for start in range(0, len(flat), chunk):
        part = flat[start:start + chunk]
        own: dict[int, list[int]] = {}
        for i, (j, _) in enumerate(part):
            own.setdefault(j, []).append(i)
        mixed = RowSteering([(steering, own[j]) for j, (steering, _) in enumerate(jobs)
                             if j in own and steering is not None])
        answered = answer_and_judge(lm, [r for _, r in part], gen_cfg, judge, mixed, early_stop, on_done=on_done)
        yield from ((j, row) for (j, _), row in zip(part, answered))


def _generation(config: RefusalEvalConfig) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                            system=config.system, seed=config.seed)


def _unsteered_answers(lm: ChatModel, steering: Steering | None, todo: list[Record], config: RefusalEvalConfig,
                       unsteered: str | Path | None, run_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of `unsteered` (an unsteered run with these settings) for the prompts the gate of
    `steering` does not flag; [] when there is no gate or no such run."""
    from saesteer.evaluate.detector import gate_decisions

    if steering is None or steering.gate is None or unsteered is None or not todo:
        return []
    folder = Path(unsteered)
    if not is_unsteered_twin(folder, run_info):
        return []
    answers = {row["id"]: row for row in finished_rows(folder / "responses.jsonl")}
    candidates = [r for r in todo if r.id in answers]
    if not candidates:
        return []
    fires = gate_decisions(lm, steering, [r.prompt for r in candidates], batch_size=config.batch_size,
                           system=config.system)
    return [answers[r.id] for r, fire in zip(candidates, fires) if not fire]


def answer_and_judge(lm: ChatModel, chunk: list[Record], gen_cfg: GenerationConfig, judge: Any,
               steering: Steering | None, early_stop: bool, on_done: OnDone | None = None) -> list[dict[str, Any]]:
    """Generate and judge a chunk of prompts (rows are written by the caller); `on_done` hears of
    each prompt as its answer finishes, so progress moves per prompt, not per chunk."""
    from saesteer.judge import judge_stopper
    from saesteer.judge.coherence import COHERENCE_WORDS, coherence_fields

    prompts = [r.prompt for r in chunk]
    texts = [r.text for r in chunk]
    stop = judge_stopper(judge, texts, min_words=COHERENCE_WORDS) if early_stop else None
    if steering is not None:
        with steering.active():
            gens = generate(lm, prompts, gen_cfg, should_stop=stop, on_done=on_done)
        decisions = steering.gate.decisions if steering.gate is not None else None
    else:
        gens = generate(lm, prompts, gen_cfg, should_stop=stop, on_done=on_done)
        decisions = None
    verdicts = judge.judge(texts, [g.text for g in gens])
    rows = []
    for i, (r, g, v) in enumerate(zip(chunk, gens, verdicts)):
        row = {"id": r.id, "dataset": r.source, "label": r.label, "category": r.category,
               "prompt": r.prompt, "response": g.text, "refusal": bool(v.refusal),
               "partial": bool(getattr(v, "partial", False)), "judge": getattr(v, "tier", None),
               "finish_reason": g.finish_reason, "new_tokens": g.n_new_tokens,
               **coherence_fields(g.text, bool(v.refusal))}
        if decisions is not None:
            row["steered"] = decisions.get(i, False)
        rows.append(row)
    return rows


def _merge(out: Path, shard: Shard, records: list[Record]) -> list[dict[str, Any]]:
    """All rows in dataset order (from the rank files under torchrun); the file is rewritten in that order."""
    if shard.world == 1:
        rows = read_jsonl(out / "responses.jsonl")
    else:
        rows = []
        for rank in range(shard.world):
            rows += read_jsonl(out / f"responses.rank{rank}.jsonl", tolerate_torn_tail=True)
    by_id = {row["id"]: row for row in rows}
    ordered = [by_id[r.id] for r in records if r.id in by_id]
    if shard.world > 1 or [row["id"] for row in rows] != [row["id"] for row in ordered]:  # shards, reused rows
        from saesteer.files import atomic_path
        import json

        with atomic_path(out / "responses.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered), encoding="utf-8")
    return ordered


def summarise(rows: list[dict[str, Any]], records: list[Record] | None = None) -> dict[str, Any]:
    """Refusal on unsafe, over-refusal on safe: overall, per dataset and per category. Each
    group also gives its coherent refusals and its broken (degenerate) answers: a refusal that
    is not coherent text is counted under `broken`, not as a working refusal."""
    groups: dict[tuple[str, str, str | None], list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("label") not in ("safe", "unsafe"):
            continue
        groups[("all", row["label"], None)].append(row)
        groups[(row["dataset"], row["label"], None)].append(row)
        if row.get("category"):
            groups[(row["dataset"], row["label"], row["category"])].append(row)

    def stats(items: list[dict]) -> dict[str, Any]:
        k = sum(r["refusal"] for r in items)
        out = rate(k, len(items))
        out["partial"] = sum(r.get("partial", False) for r in items)
        # Rows of runs older than the coherence check count as coherent.
        broken = sum(not r.get("coherent", True) for r in items)
        out["coherent_refusal"] = rate(sum(r["refusal"] and r.get("coherent", True) for r in items), len(items))
        out["broken"] = rate(broken, len(items))
        if any("steered" in r for r in items):
            out["steered"] = sum(bool(r.get("steered")) for r in items)
        return out

    summary: dict[str, Any] = {"n_rows": len(rows), "unsafe_refusal": None, "safe_over_refusal": None,
                               "datasets": {}, "categories": {}}
    for (dataset, label, category), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        s = stats(items)
        key = "unsafe_refusal" if label == "unsafe" else "safe_over_refusal"
        if dataset == "all":
            summary[key] = s
        elif category is None:
            summary["datasets"].setdefault(dataset, {})[key] = s
        else:
            summary["categories"].setdefault(dataset, {}).setdefault(key, {})[category] = s
    if records is not None:
        summary["complete"] = len(rows) == len(records)
    return summary
