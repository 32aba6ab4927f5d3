"""Single-turn attacks on a (steered) model: every attack applied to every harmful prompt, answers
generated greedily in batches, judged, and the attack success rates summarised.

Writes `responses.jsonl` (one row per attack x steering position x prompt, keyed by `key`: the
messages' last user turn, the answer, its decoding, the judgements) and `summary.json` (attack
success per attack, family and overall, the plain request's refusal rate, many-shot success
against N, with 95% Wilson intervals; see `attacks.success` for what counts as success). A rerun
skips finished rows, and may add attacks or positions to the same folder.

Prefilling attacks write the start of the assistant's turn after the chat template's generation
prompt and generate from there (the prompt is rendered here and sent raw, so every token of it,
the prefix included, counts as prompt for `positions: prompt`; a conditional detector then reads
the whole rendered prompt). `positions` (all, prompt, generated) can be set per run, overriding the
spec's, and several can be compared in one run: steering only the generated tokens starts after
the prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saesteer.attacks.base import judge_name, open_run, refusal_judge
from saesteer.attacks.catalog import resolve_attacks
from saesteer.attacks.jailbreaks import PLAIN
from saesteer.attacks.success import MIN_TERMS, MIN_WORDS, score_answer, summarise_group
from saesteer.attacks.templates import Attack
from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError
from saesteer.files import JsonlAppender, read_jsonl, write_json
from saesteer.generate import EVAL_BATCH, GenerationConfig, encode_prompt, generate
from saesteer.models import ChatModel
from saesteer.steer import Steering, SteeringSpec
from saesteer.steer.spec import POSITIONS

ROWS = "responses.jsonl"


@dataclass
class AttackEvalConfig:
    datasets: str = "bundled:harmful"
    """Comma-separated datasets or files; prompts labelled safe are left out."""
    attacks: str = "all"
    """Comma-separated attack names, families, `all`, template files (see `saesteer eval attacks --list`)."""
    limit: int | None = None
    """At most this many prompts per dataset (a seeded sample)."""
    benign: str | None = None
    """Datasets of safe prompts, answered plainly in the same run: over-refusal beside the attacks' gain."""
    positions: str | None = None
    """Comma-separated steering positions (all, prompt, generated) overriding the spec's; None keeps it."""
    max_new_tokens: int = 128
    batch_size: int = EVAL_BATCH
    judge: str = "auto"
    system: str | None = None
    seed: int = 0
    chunk: int = 64
    """Rows generated and written per step (the unit of resumption)."""

    def __post_init__(self) -> None:
        for name in ("limit", "max_new_tokens", "batch_size", "chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SaesteerError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to resume into the same folder (attacks and positions may grow)."""
        d = asdict(self)
        for key in ("batch_size", "chunk", "attacks", "positions", "benign"):
            d.pop(key)
        d["success"] = {"min_terms": MIN_TERMS, "min_words": MIN_WORDS}
        return d


@dataclass
class Item:
    key: str
    attack: Attack
    record: Record
    positions: str | None
    label: str = "unsafe"


def parse_positions(value: str | None, spec: SteeringSpec | None) -> list[str | None]:
    """The steering positions to run: None (unsteered), the spec's own, or those asked for."""
    if spec is None:
        if value:
            raise SaesteerError("--positions needs a steering spec (--steer SPEC or inline edits)")
        return [None]
    if not value:
        return [spec.positions]
    out = []
    for p in (s.strip() for s in value.split(",") if s.strip()):
        if p not in POSITIONS:
            raise SaesteerError(f"unknown positions {p!r}; use {', '.join(POSITIONS)} (comma-separated)")
        if p not in out:
            out.append(p)
    if not out:
        raise SaesteerError(f"--positions names no position; use {', '.join(POSITIONS)}")
    return out


def row_key(attack: str, positions: str | None, prompt_id: str) -> str:
    return f"{attack}|{positions or '-'}|{prompt_id}"


def evaluate_attacks(lm: ChatModel, out: str | Path, config: AttackEvalConfig,
                     spec: SteeringSpec | str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run every attack on every harmful prompt (plus the plain request) and summarise."""
    attacks = resolve_attacks(config.attacks)          # bad names fail before any model work
    if spec is not None and not isinstance(spec, SteeringSpec):
        spec = SteeringSpec.load(spec)
    positions = parse_positions(config.positions, spec)
    steerings = {p: Steering(lm, replace(spec, positions=p)) if spec is not None and p else None
                 for p in positions}
    judge = refusal_judge(config.judge)
    records = select_records(config.datasets, config.limit, config.seed)
    benign = select_records(config.benign, config.limit, config.seed, harmful=False) if config.benign else []
    spec_hash = spec.hash() if spec is not None else None
    out = open_run(out, lm, {"mode": "attacks", "spec_hash": spec_hash,
                             "spec": spec.to_dict() if spec is not None else None,
                             "settings": config.settings(), "judge": judge_name(judge)})
    plan = [Item(row_key(a.name, p, r.id), a, r, p) for p in positions for a in [PLAIN, *attacks] for r in records]
    plan += [Item(row_key("none:safe", p, r.id), PLAIN, r, p, "safe") for p in positions for r in benign]
    done = finished_keys(out / ROWS)
    stale = next((item for item in plan if done.get(item.key) not in (None, item.record.text)), None)
    if stale is not None:
        raise SaesteerError(f"{out} holds an answer to another request under the id {stale.record.id!r} (the dataset "
                            "changed since that run); use a new --out or delete the folder")
    todo = [item for item in plan if item.key not in done]
    gen_cfg = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               system=config.system, seed=config.seed)
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="answer", desc="eval attacks",
               disable=not progress)
    started = time.time()
    with JsonlAppender(out / ROWS) as writer:
        for p in positions:
            mine = [item for item in todo if item.positions == p]
            for start in range(0, len(mine), config.chunk):
                for row in run_chunk(lm, mine[start:start + config.chunk], gen_cfg, judge, steerings[p],
                                     on_done=lambda: bar.update(1)):
                    writer.write({**row, "spec_hash": steerings[p].hash if steerings[p] else None})
    bar.close()
    by_key = {row["key"]: row for row in read_jsonl(out / ROWS, tolerate_torn_tail=True)}
    rows = [by_key[item.key] for item in plan if item.key in by_key]
    summary = summarise_attacks(rows, attacks, positions)
    summary.update({"mode": "attacks", "model": lm.describe(), "spec_hash": spec_hash, "judge": judge_name(judge),
                    "dataset_spec": config.datasets, "limit": config.limit, "n_prompts": len(records),
                    "generation": asdict(gen_cfg), "complete": len(rows) == len(plan),
                    "seconds_this_run": round(time.time() - started, 1)})
    write_json(out / "summary.json", summary)
    return summary


def select_records(datasets: str, limit: int | None, seed: int, harmful: bool = True) -> list[Record]:
    """The prompts not labelled safe (`harmful`) or not labelled unsafe, per dataset a seeded sample
    of at most `limit` taken after that selection (from a one-label set, the sample `eval refusal` draws)."""
    return load_records(datasets, limit=limit, seed=seed, exclude_label="safe" if harmful else "unsafe")


def finished_keys(path: Path) -> dict[str, Any]:
    """Key -> the request of every row an earlier run wrote."""
    if not path.exists():
        return {}
    keys = {}
    for n, row in enumerate(read_jsonl(path, tolerate_torn_tail=True), 1):
        if not isinstance(row.get("key"), str):
            raise SaesteerError(f"{path}: row {n} has no 'key', so it is not a row of `eval attacks`; "
                                "delete that line (or the file) and rerun")
        keys[row["key"]] = row.get("request")
    return keys


def prefilled_prompt(lm: ChatModel, messages: list[dict[str, str]], prefix: str, system: str | None) -> str:
    """The rendered chat prompt with the assistant's turn already begun by `prefix`, as raw text.

    The tokenizer adds its BOS to raw text, so a BOS the template wrote is removed here."""
    text = lm.chat(messages, system=system) + prefix
    bos = lm.tokenizer.bos_token
    adds_bos = bool(lm.tokenizer("", add_special_tokens=True)["input_ids"])
    if adds_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def run_chunk(lm: ChatModel, items: list[Item], gen_cfg: GenerationConfig, judge: Any,
              steering: Steering | None, on_done: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Build, generate and judge a chunk of rows; `on_done()` hears of each answer as it finishes."""
    tick = on_done or (lambda: None)
    rows: list[dict[str, Any] | None] = [None] * len(items)
    chat_jobs: list[tuple[int, Any]] = []
    raw_jobs: list[tuple[int, Any]] = []
    for i, item in enumerate(items):
        base = _row_head(item)
        try:
            messages = item.attack.messages(item.record.text)
        except SaesteerError as e:
            rows[i] = {**base, "status": "failed", "error": str(e)}
            tick()
            continue
        base["prompt"] = messages[-1]["content"]
        base["n_messages"] = len(messages)
        if item.attack.prefill:
            prompt: Any = prefilled_prompt(lm, messages, item.attack.prefill, gen_cfg.system)
            ids = lm.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            prompt = messages
            ids = encode_prompt(lm, messages, chat=True, system=gen_cfg.system)
        if len(ids) + gen_cfg.max_new_tokens > lm.context_length:
            rows[i] = {**base, "status": "too_long", "prompt_tokens": len(ids)}
            tick()
            continue
        rows[i] = base
        (raw_jobs if item.attack.prefill else chat_jobs).append((i, prompt))
    for jobs, chat in ((chat_jobs, True), (raw_jobs, False)):
        if not jobs:
            continue
        cfg = gen_cfg if chat else replace(gen_cfg, system=None)   # the raw prompt holds the system prompt
        if steering is not None:
            with steering.active():
                gens = generate(lm, [p for _, p in jobs], cfg, chat=chat, on_done=lambda _r, _g: tick())
            gate = steering.gate
            decisions = [bool(gate.decisions.get(j, False)) for j in range(len(jobs))] if gate else None
        else:
            gens = generate(lm, [p for _, p in jobs], cfg, chat=chat, on_done=lambda _r, _g: tick())
            decisions = None
        requests = [items[i].record.text for i, _ in jobs]
        answers = [_decoded(items[i].attack, g.text) for (i, _), g in zip(jobs, gens)]
        verdicts = judge.judge(requests, answers)
        for j, ((i, _), g, answer, verdict) in enumerate(zip(jobs, gens, answers, verdicts)):
            row = rows[i]
            assert row is not None
            row.update({"status": "ok", "response": g.text, "finish_reason": g.finish_reason,
                        "new_tokens": g.n_new_tokens, "prompt_tokens": g.n_prompt_tokens})
            if answer != g.text:
                row["decoded"] = answer
            row.update(score_answer(items[i].record.text, answer, verdict))
            if decisions is not None:
                row["steered"] = decisions[j]
    return [r for r in rows if r is not None]


def _decoded(attack: Attack, text: str) -> str:
    if attack.decode is None:
        return text
    try:
        return attack.decode(text)
    except Exception:  # a decoder must never lose an answer; judge it as written
        return text


def _row_head(item: Item) -> dict[str, Any]:
    r = item.record
    head = {"key": item.key, "attack": item.attack.name, "family": item.attack.family,
            "positions": item.positions, "id": r.id, "dataset": r.source, "category": r.category,
            "label": item.label, "request": r.text}
    if item.attack.prefill:
        head["prefill"] = item.attack.prefill
    if item.attack.shots:
        head["shots"] = item.attack.shots
    return head


def summarise_attacks(rows: list[dict[str, Any]], attacks: list[Attack],
                      positions: list[str | None]) -> dict[str, Any]:
    """Per steering position (the first at the top level, all under `by_positions` when several)."""
    groups = {p: summarise_group([r for r in rows if r.get("positions") == p], attacks) for p in positions}
    summary: dict[str, Any] = {"n_rows": len(rows), "positions": positions[0], **groups[positions[0]]}
    if len(positions) > 1:
        summary["by_positions"] = {p: groups[p] for p in positions}
    return summary
