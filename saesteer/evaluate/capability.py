"""Capability of a (steered) model: MMLU, TruthfulQA and GSM8K, each with a 95% interval.

Tasks (listed, with their formats, in `capability_tasks`; summaries in `capability_summary`):

* `mmlu_gen`: the paper's format. 5-shot chat (the exemplars and their `ANSWER: X` replies as
  prior turns), greedy generation, the letter read from the reply; reports the letter
  histogram (A-D and UNK) and how often the reply was a refusal.
* `mmlu_ll`: lm-eval's default MMLU, 5-shot; the most likely of " A" ... " D" after "Answer:".
* `truthfulqa_mc1`, `truthfulqa_mc2`: lm-eval's 6-shot QA preamble; MC1 = the most likely
  answer is the true one, MC2 = normalised probability mass on the true answers.
* `gsm8k`: lm-eval's `gsm8k_cot` (the 8 chain-of-thought exemplars of Wei et al. as plain
  text); the last number of the generation must equal the reference.
* `gsm8k_chat` (not run by default): the paper's format, the exemplars as chat turns.

Steering, when given, is active during every forward (log-likelihood and generation). Writes
`run.json` (model, spec, settings), `items.jsonl` (one row per task item; a rerun skips
finished rows) and `summary.json`. Under `torchrun` each rank takes every world-th item and
rank 0 merges the shards.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError
from saesteer.evaluate import capability_tasks as fmt
from saesteer.evaluate.capability_ll import loglikelihoods
from saesteer.evaluate.capability_summary import summarise
from saesteer.evaluate.capability_tasks import DATASET, DEFAULT_TASKS, TASKS, parse_tasks, task_format
from saesteer.evaluate.distributed import Shard, barrier, current_shard
from saesteer.evaluate.rundir import finished_rows, is_unsteered_twin, previous_run
from saesteer.files import JsonlAppender, atomic_path, ensure_dir, read_jsonl, write_json
from saesteer.generate import GenerationConfig, generate
from saesteer.models import ChatModel
from saesteer.steer import Steering, SteeringSpec

@dataclass
class CapabilityConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Tasks to run (a comma-separated string is accepted)."""
    limit: int | None = None
    """At most this many items per task: a seeded sample, the same items for every model and spec."""
    seed: int = 0
    mmlu_shots: int = 5
    """Exemplars per MMLU question: the first ones of its subject's dev split."""
    gsm8k_shots: int = 8
    """How many of the 8 chain-of-thought exemplars to show."""
    mmlu_max_new_tokens: int = 64
    """Generation budget of `mmlu_gen` (a row stops as soon as it holds `ANSWER: X`)."""
    gsm8k_max_new_tokens: int = 256
    judge: str | None = "auto"
    """Refusal judge for `mmlu_gen` replies (None: not judged)."""
    system: str | None = None
    """System prompt of the chat tasks (None: the template's default; `gsm8k_chat` then uses
    the paper's "the last number you write is your answer")."""
    batch_size: int = 8
    """Rows per forward pass."""
    share_prefix: bool = True
    """Cache the few-shot prefix shared by a group of log-likelihood requests."""
    chunk: int = 64
    """Items scored and written per step (the unit of resumption)."""

    def __post_init__(self) -> None:
        self.tasks = parse_tasks(self.tasks)
        if self.limit is not None and self.limit < 1:
            raise SaesteerError("limit must be at least 1")
        if not 0 <= self.mmlu_shots <= 5:
            raise SaesteerError("mmlu_shots must be between 0 and 5 (the dev split has 5 per subject)")
        if not 0 <= self.gsm8k_shots <= len(fmt.GSM8K_EXEMPLARS):
            raise SaesteerError(f"gsm8k_shots must be between 0 and {len(fmt.GSM8K_EXEMPLARS)}")
        if self.batch_size < 1 or self.chunk < 1:
            raise SaesteerError("batch_size and chunk must be at least 1")
        if self.mmlu_max_new_tokens < 1 or self.gsm8k_max_new_tokens < 1:
            raise SaesteerError("max_new_tokens must be at least 1")

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to resume into the same folder (tasks may be added)."""
        d = asdict(self)
        for key in ("tasks", "batch_size", "share_prefix", "chunk"):
            d.pop(key)
        return d


@dataclass
class Item:
    task: str
    record: Record
    shots: list[Record] = field(default_factory=list)


# --- data --------------------------------------------------------------------------------------

def sample(records: list, limit: int | None, seed: int) -> list:
    """The seeded sample `load_records(limit=...)` takes, kept in dataset order."""
    if limit is None or limit >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


class TaskData:
    """Datasets by name, loaded once; `records` overrides the registry (tests, custom sets)."""

    def __init__(self, records: Mapping[str, list[Record]] | None):
        self.given = dict(records or {})
        self.loaded: dict[str, list[Record]] = {}

    def __call__(self, name: str) -> list[Record]:
        if name not in self.loaded:
            self.loaded[name] = list(self.given[name]) if name in self.given else load_records(name)
        return self.loaded[name]


def task_items(task: str, config: CapabilityConfig, data: TaskData) -> list[Item]:
    records = sample(data(DATASET[task]), config.limit, config.seed)
    form = task_format(task)
    if form in ("mmlu_gen", "mmlu_ll"):
        dev: dict[str, list[Record]] = defaultdict(list)
        if config.mmlu_shots:
            # MMLU has a dev split for exemplars; a bundled set lends its own other questions.
            for r in data("mmlu:dev" if DATASET[task] == "mmlu" else DATASET[task]):
                dev[r.category or ""].append(r)
        for r in records:
            if not r.choices or len(r.choices) != 4 or not r.correct:
                raise SaesteerError(f"MMLU record {r.id} needs 4 choices and a correct index")
        return [Item(task, r, [s for s in dev.get(r.category or "", []) if s.id != r.id][:config.mmlu_shots])
                for r in records]
    if form.startswith("truthfulqa"):
        for r in records:
            if not r.choices or not r.correct or "mc2_choices" not in r.meta:
                raise SaesteerError(f"TruthfulQA record {r.id} needs MC1 choices and meta.mc2_choices/mc2_correct")
    if form.startswith("gsm8k"):
        for r in records:
            if r.reference is None:
                raise SaesteerError(f"GSM8K record {r.id} has no reference answer")
    return [Item(task, r) for r in records]


# --- scoring one chunk -------------------------------------------------------------------------

class _Runner:
    def __init__(self, lm: ChatModel, config: CapabilityConfig, steering: Steering | None, judge: Any):
        self.lm, self.config, self.steering, self.judge = lm, config, steering, judge

    def active(self):
        import contextlib

        return self.steering.active() if self.steering is not None else contextlib.nullcontext()

    def decisions(self) -> dict[int, bool] | None:
        gate = self.steering.gate if self.steering is not None else None
        return dict(gate.decisions) if gate is not None else None

    def run(self, task: str, items: list[Item], on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Score a chunk of items (rows are written by the caller); `on_done(i)` hears of item i as
        soon as its answer or its last log-likelihood is ready, so progress moves per item."""
        form = task_format(task)
        rows = (self._loglikelihood(form, items, on_done) if form in ("mmlu_ll", "truthfulqa_mc1", "truthfulqa_mc2")
                else self._generate(form, items, on_done))
        for row in rows:
            row["task"] = task
        return rows

    def _loglikelihood(self, task: str, items: list[Item],
                       on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        requests: list[tuple[str, str]] = []
        groups: list[str] = []
        spans: list[tuple[int, int]] = []
        for it in items:
            r = it.record
            if task == "mmlu_ll":
                context = fmt.mmlu_ll_context(r.category or "", it.shots, r)
                conts = [f" {letter}" for letter in fmt.LETTERS]
                group = f"mmlu:{r.category}"
            else:
                context = fmt.truthfulqa_context(r.text)
                conts = [f" {c}" for c in (r.choices if task == "truthfulqa_mc1" else r.meta["mc2_choices"])]
                group = "truthfulqa"
            spans.append((len(requests), len(requests) + len(conts)))
            requests += [(context, c) for c in conts]
            groups += [group] * len(conts)
        gate = self.steering is not None and self.steering.gate is not None
        owner = [i for i, (a, b) in enumerate(spans) for _ in range(a, b)]
        left = [b - a for a, b in spans]

        def scored(request: int) -> None:
            left[owner[request]] -= 1
            if left[owner[request]] == 0 and on_done is not None:
                on_done(owner[request])

        with self.active():
            results = loglikelihoods(self.lm, requests, batch_size=self.config.batch_size, groups=groups,
                                     share_prefix=self.config.share_prefix and not gate, on_done=scored)
        decisions = self.decisions()
        rows = []
        for it, (a, b) in zip(items, spans):
            r = it.record
            lps = [x.logprob for x in results[a:b]]
            best = max(range(len(lps)), key=lambda j: lps[j])  # first of ties, like numpy's argmax
            row: dict[str, Any] = {"task": task, "id": r.id, "logprobs": [round(x, 5) for x in lps]}
            if task == "mmlu_ll":
                row.update(subject=r.category, gold=fmt.LETTERS[r.correct[0]], pred=fmt.LETTERS[best],
                           correct=best == r.correct[0], n_shots=len(it.shots))
            elif task == "truthfulqa_mc1":
                row.update(pred=best, correct=best in r.correct)
            else:
                true = r.meta["mc2_correct"]
                row.update(score=fmt.mc2_score(lps, true), n_true=len(true))
            if decisions is not None:
                row["steered"] = any(decisions.get(x.row, False) for x in results[a:b])
            rows.append(row)
        return rows

    def _generate(self, task: str, items: list[Item],
                  on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        c = self.config
        chats = chat_prompts(task, items, c)
        if chats is not None:
            prompts: list[Any] = chats[0]
            gen_cfg = GenerationConfig(max_new_tokens=c.mmlu_max_new_tokens if task == "mmlu_gen"
                                       else c.gsm8k_max_new_tokens, batch_size=c.batch_size, system=chats[1],
                                       seed=c.seed)
            chat = True
            stop = (lambda _row, text: fmt.answer_given(text)) if task == "mmlu_gen" else None
        else:
            prompts = [gsm8k_prompt(it.record.text, c.gsm8k_shots) for it in items]
            gen_cfg = GenerationConfig(max_new_tokens=c.gsm8k_max_new_tokens, batch_size=c.batch_size,
                                       stop_strings=fmt.GSM8K_STOP, seed=c.seed)
            chat, stop = False, None
        with self.active():
            gens = generate(self.lm, prompts, gen_cfg, chat=chat, should_stop=stop,
                            on_done=None if on_done is None else lambda row, _gen: on_done(row))
        decisions = self.decisions()
        rows = []
        for i, (it, g) in enumerate(zip(items, gens)):
            r = it.record
            row: dict[str, Any] = {"task": task, "id": r.id}
            if task == "mmlu_gen":
                letter = fmt.extract_letter(g.text)
                row.update(subject=r.category, gold=fmt.LETTERS[r.correct[0]], pred=letter or fmt.UNK,
                           correct=letter == fmt.LETTERS[r.correct[0]], n_shots=len(it.shots))
            else:
                pred = fmt.extract_number(g.text)
                strict = fmt.extract_strict(g.text)
                row.update(reference=r.reference, pred=pred, correct=fmt.number_matches(pred, r.reference),
                           pred_strict=strict, correct_strict=fmt.number_matches(strict, r.reference))
            row.update(response=g.text, finish_reason=g.finish_reason, new_tokens=g.n_new_tokens)
            if decisions is not None:
                row["steered"] = decisions.get(i, False)
            rows.append(row)
        if task == "mmlu_gen" and self.judge is not None:
            verdicts = self.judge.judge([it.record.text for it in items], [g.text for g in gens])
            for row, v in zip(rows, verdicts):
                row["refusal"] = bool(v.refusal)
        return rows


def chat_prompts(form: str, items: list[Item], config: CapabilityConfig) -> tuple[list[Any], str | None] | None:
    """The conversations and system prompt of a chat-generation task (None for other formats)."""
    if form == "mmlu_gen":
        return [fmt.mmlu_gen_conversation(it.record.category or "", it.shots, it.record) for it in items], config.system
    if form == "gsm8k_chat":
        exemplars = fmt.gsm8k_conversation("")[:2 * config.gsm8k_shots]
        return ([exemplars + [{"role": "user", "content": it.record.text}] for it in items],
                config.system or fmt.GSM8K_SYSTEM)
    return None


def gsm8k_prompt(question: str, shots: int = 8) -> str:
    """`capability_tasks.gsm8k_prompt` with the first `shots` exemplars."""
    if shots == len(fmt.GSM8K_EXEMPLARS):
        return fmt.gsm8k_prompt(question)
    head = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in fmt.GSM8K_EXEMPLARS[:shots])
    return f"{head}Q: {question}\nA:"


def get_refusal_judge(name: str | None) -> Any:
    """The refusal judge, or None when none is asked for or the judge module is unavailable."""
    if not name or name == "none":
        return None
    try:
        from saesteer.judge import get_judge
    except ImportError:
        return None
    return get_judge(name)


# --- the evaluation ----------------------------------------------------------------------------

def _rows_path(out: Path, shard: Shard) -> Path:
    return out / ("items.jsonl" if shard.world == 1 else f"items.rank{shard.rank}.jsonl")


def evaluate_capability(lm: ChatModel, out_dir: str | Path, config: CapabilityConfig | None = None,
                        spec: SteeringSpec | str | Path | dict | None = None, *,
                        records: Mapping[str, list[Record]] | None = None,
                        progress: bool = True, unsteered: str | Path | None = None) -> dict[str, Any]:
    """Run the configured tasks with `spec` active; return (and write) the summary.

    `records` replaces registry datasets by name (`mmlu`, `mmlu:dev`, `truthfulqa`, `gsm8k`).
    `unsteered` is the folder of an unsteered run with the same settings: a gated spec takes from
    it the rows of the chat-generation items (`mmlu_gen`, `gsm8k_chat` and their bundled forms) its
    gate leaves alone, as `evaluate_refusal` does. Returns {} on ranks other than 0 under torchrun.
    """
    config = config or CapabilityConfig()
    shard = current_shard()
    steering = Steering(lm, spec) if spec is not None else None   # checks the spec before any work
    spec_hash = steering.hash if steering else None
    judge = (get_refusal_judge(config.judge) if any(task_format(t) == "mmlu_gen" for t in config.tasks)
             else None)
    data = TaskData(records)
    items = {task: task_items(task, config, data) for task in config.tasks}
    for task, its in items.items():
        if not its:
            raise SaesteerError(f"no items for task {task}")
    out = ensure_dir(out_dir)     # only once the spec, judge and items are known good: no empty folder
    run_info: dict[str, Any] = {"model": lm.describe(), "spec_hash": spec_hash,
                                "spec": steering.spec.to_dict() if steering else None,
                                "settings": config.settings(), "tasks": {}}
    previous = previous_run(out, run_info, lm.model_id)
    if previous is not None:
        run_info["tasks"] = dict(previous.get("tasks") or {})
    run_info["tasks"].update({task: {"n_items": len(its), "description": TASKS[task]} for task, its in items.items()})
    if shard.is_main:
        write_json(out / "run.json", run_info)

    path = _rows_path(out, shard)
    done = {(row["task"], row["id"]) for row in finished_rows(path, ("task", "id"))}
    runner = _Runner(lm, config, steering, judge)
    started = time.time()
    rank = f" rank {shard.rank}" if shard.world > 1 else ""
    n_reused = 0
    with JsonlAppender(path) as writer:
        for task, its in items.items():
            mine = shard.take(its)
            todo = [it for it in mine if (task, it.record.id) not in done]
            bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="item", disable=not progress,
                       desc=f"{task}{rank}")
            reused = _unsteered_rows(lm, steering, task, todo, config, unsteered, run_info)
            for row in reused:
                writer.write({**row, "steered": False, "spec_hash": spec_hash})
                bar.update(1)
            n_reused += len(reused)
            taken = {row["id"] for row in reused}
            todo = [it for it in todo if it.record.id not in taken]
            for start in range(0, len(todo), config.chunk):
                chunk = todo[start:start + config.chunk]
                for row in runner.run(task, chunk, on_done=lambda _item: bar.update(1)):
                    writer.write({**row, "spec_hash": spec_hash})
            bar.close()
    barrier(shard)
    if not shard.is_main:
        return {}
    rows = _merge(out, shard, run_info["tasks"])
    expected = {task: info["n_items"] for task, info in run_info["tasks"].items()}
    summary = summarise(rows, expected)
    summary.update({"model": lm.describe(), "spec_hash": spec_hash, "settings": config.settings(),
                    "judge": getattr(judge, "name", None), "seconds_this_run": round(time.time() - started, 1),
                    "items_from_unsteered_run": n_reused})
    write_json(out / "summary.json", summary)
    return summary


def _unsteered_rows(lm: ChatModel, steering: Steering | None, task: str, todo: list[Item], config: CapabilityConfig,
                    unsteered: str | Path | None, run_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of `unsteered` (an unsteered run with these settings) for the items of a
    chat-generation task that the gate of `steering` does not flag; [] otherwise. Log-likelihood
    requests and plain-text prompts are gated per scored sequence, so they are always run."""
    from saesteer.evaluate.detector import gate_decisions

    chats = chat_prompts(task_format(task), todo, config)
    if steering is None or steering.gate is None or unsteered is None or not todo or chats is None:
        return []
    folder = Path(unsteered)
    if not is_unsteered_twin(folder, run_info):
        return []
    rows = {row["id"]: row for row in finished_rows(folder / "items.jsonl", ("task", "id")) if row["task"] == task}
    present = [i for i, it in enumerate(todo) if it.record.id in rows]
    if not present:
        return []
    fires = gate_decisions(lm, steering, [chats[0][i] for i in present], batch_size=config.batch_size,
                           system=chats[1])
    return [rows[todo[i].record.id] for i, fire in zip(present, fires) if not fire]


def _merge(out: Path, shard: Shard, tasks: Mapping[str, Any]) -> list[dict[str, Any]]:
    if shard.world == 1:
        rows = read_jsonl(out / "items.jsonl")
    else:
        rows = []
        for rank in range(shard.world):
            part = out / f"items.rank{rank}.jsonl"
            if part.exists():
                rows += read_jsonl(part, tolerate_torn_tail=True)
        order = {task: i for i, task in enumerate(tasks)}
        rows.sort(key=lambda row: (order.get(row["task"], len(order)), row["id"]))
        with atomic_path(out / "items.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        key = (row["task"], row["id"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique
