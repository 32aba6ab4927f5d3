"""Replay fixed conversations to a (steered) model and judge its answers for refusal.

Each conversation record (PyRIT's multi-turn seeds, HH-RLHF red-team dialogues, any
conversation file) is played to the (optionally steered) model and its answer to the final user
turn is judged for refusal. Earlier assistant turns are kept as given; where a record has user
turns with no assistant turn between them (PyRIT's user-only sequences), the model answers each
in turn (`fill_missing`), under the same steering.

Writes `conversations.jsonl` (one row per conversation: full transcript, which assistant turns
were generated, the judgement) and `summary.json` (refusal rate on final turns, overall and per
dataset and category, with 95% Wilson intervals). A rerun skips finished conversations. The
Crescendo attack (`saesteer.attacks.crescendo`) writes the same files.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saesteer.attacks.base import (ROWS, finished_ids, fits, generate_turns, judge_name, load_steering, open_run,
                                   refusal_judge)
from saesteer.data import Record, load_records
from saesteer.errors import SaesteerError
from saesteer.evaluate.stats import rate
from saesteer.files import JsonlAppender, read_jsonl, write_json
from saesteer.generate import GenerationConfig
from saesteer.judge.coherence import coherence_fields
from saesteer.models import ChatModel, Conversation, to_conversation
from saesteer.steer import Steering, SteeringSpec


@dataclass
class ReplayConfig:
    datasets: str = "pyrit:multiturn"
    """Comma-separated conversation datasets or files (records that are single prompts also work)."""
    limit: int | None = None
    """At most this many conversations per dataset (a seeded sample)."""
    fill_missing: bool = True
    """Generate the model's answer between user turns that have no assistant turn between them."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0: greedy. The paper's multi-turn runs sampled; greedy makes replays reproducible."""
    batch_size: int = 8
    judge: str = "auto"
    system: str | None = None
    seed: int = 0
    chunk: int = 64
    """Conversations run in lockstep and written per step (the unit of resumption)."""

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_size")
        d.pop("chunk")
        return d


def replay_plan(record: Record, fill_missing: bool) -> tuple[Conversation, list[int], bool]:
    """(messages, indices of the user messages the model answers, whether final assistant turns were cut)."""
    messages = to_conversation(record.prompt)
    cut = False
    while messages and messages[-1]["role"] != "user":
        messages.pop()
        cut = True
    if not any(m["role"] == "user" for m in messages):
        raise SaesteerError(f"conversation {record.id} has no user turn to answer")
    last = len(messages) - 1
    points = [i for i, m in enumerate(messages) if m["role"] == "user"
              and (i == last or (fill_missing and messages[i + 1]["role"] == "user"))]
    return messages, points, cut


def evaluate_replay(lm: ChatModel, out: str | Path, config: ReplayConfig,
                    spec: SteeringSpec | str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Replay conversation records and judge the model's answer to each final user turn."""
    steering = load_steering(lm, spec)
    spec_hash = steering.hash if steering else None
    judge = refusal_judge(config.judge)
    records = load_records(config.datasets, limit=config.limit, seed=config.seed)
    out = open_run(out, lm, {"mode": "replay", "spec_hash": spec_hash,
                             "spec": steering.spec.to_dict() if steering else None,
                             "settings": config.settings(), "judge": judge_name(judge)})
    done = finished_ids(out)
    todo = [r for r in records if r.id not in done]
    gen_cfg = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                               batch_size=config.batch_size, system=config.system, seed=config.seed)
    bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="conv", desc="replay",
               disable=not progress)
    started = time.time()
    with JsonlAppender(out / ROWS) as writer:
        for start in range(0, len(todo), config.chunk):
            chunk = todo[start:start + config.chunk]
            for row in _replay_chunk(lm, chunk, config, gen_cfg, judge, steering,
                                     on_done=lambda _conversation: bar.update(1)):
                writer.write({**row, "spec_hash": spec_hash})
    bar.close()
    by_id = {row["id"]: row for row in read_jsonl(out / ROWS, tolerate_torn_tail=True)}
    rows = [by_id[r.id] for r in records if r.id in by_id]
    summary = summarise_replay(rows)
    summary.update({"mode": "replay", "model": lm.describe(), "spec_hash": spec_hash, "judge": judge_name(judge),
                    "dataset_spec": config.datasets, "limit": config.limit, "generation": asdict(gen_cfg),
                    "complete": len(rows) == len(records), "seconds_this_run": round(time.time() - started, 1)})
    write_json(out / "summary.json", summary)
    return summary


def _replay_chunk(lm: ChatModel, chunk: list[Record], config: ReplayConfig, gen_cfg: GenerationConfig,
                  judge: Any, steering: Steering | None,
                  on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Play a chunk of conversations in lockstep: step k answers each one's k-th pending user turn.

    `on_done(i)` hears of conversation i as soon as its last answer is generated (or it is found
    too long), so progress moves per conversation, not per chunk."""
    done = on_done or (lambda _i: None)
    plans = [replay_plan(r, config.fill_missing) for r in chunk]
    built: list[Conversation] = [[] for _ in chunk]
    cursor = [0] * len(chunk)
    generated: list[list[dict[str, Any]]] = [[] for _ in chunk]
    too_long = [False] * len(chunk)
    for step in range(max(len(p[1]) for p in plans)):
        live, prompts = [], []
        for i, (messages, points, _) in enumerate(plans):
            if step >= len(points) or too_long[i]:
                continue
            built[i] += messages[cursor[i]:points[step] + 1]
            cursor[i] = points[step] + 1
            if not fits(lm, built[i], gen_cfg):
                too_long[i] = True
                done(i)
                continue
            live.append(i)
            prompts.append(list(built[i]))
        cfg = replace(gen_cfg, seed=gen_cfg.seed * 1000 + step)
        last = [step == len(plans[i][1]) - 1 for i in live]
        gens, decisions = generate_turns(lm, prompts, cfg, steering,
                                         on_done=lambda j, _gen: done(live[j]) if last[j] else None)
        verdicts = judge.judge([p[-1]["content"] for p in prompts], [g.text for g in gens]) if gens else []
        for j, (i, g, v) in enumerate(zip(live, gens, verdicts)):
            turn = {"index": len(built[i]), "response": g.text, "refusal": bool(v.refusal),
                    "partial": bool(getattr(v, "partial", False)), "judge": getattr(v, "tier", None),
                    "finish_reason": g.finish_reason, "new_tokens": g.n_new_tokens,
                    **coherence_fields(g.text, bool(v.refusal))}
            if decisions is not None:
                turn["steered"] = decisions[j]
            generated[i].append(turn)
            built[i].append({"role": "assistant", "content": g.text})
    rows = []
    for i, record in enumerate(chunk):
        messages, points, cut = plans[i]
        final = generated[i][-1] if len(generated[i]) == len(points) else None
        row: dict[str, Any] = {"id": record.id, "dataset": record.source, "label": record.label,
                               "category": record.category, "n_messages": len(messages),
                               "generated_turns": [t["index"] for t in generated[i]],
                               "dropped_final_assistant": cut, "transcript": built[i]}
        if final is None:
            row.update({"status": "too_long", "response": None, "refusal": None})
        else:
            row.update({"status": "ok", "prompt": messages[-1]["content"], "response": final["response"],
                        "refusal": final["refusal"], "partial": final["partial"], "judge": final["judge"],
                        "finish_reason": final["finish_reason"], "new_tokens": final["new_tokens"],
                        "coherent": final["coherent"], "broken_because": final["broken_because"],
                        "outcome": final["outcome"],
                        "intermediate_refusals": sum(t["refusal"] for t in generated[i][:-1])})
            if "steered" in final:
                row["steered"] = final["steered"]
        rows.append(row)
    return rows


def summarise_replay(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Refusal on final turns: overall, per dataset, per category and per label."""
    judged = [r for r in rows if r.get("status") == "ok"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in judged:
        groups[("dataset", r["dataset"])].append(r)
        if r.get("category"):
            groups[("category", f"{r['dataset']}:{r['category']}")].append(r)
        if r.get("label"):
            groups[("label", r["label"])].append(r)

    def stats(items: list[dict]) -> dict[str, Any]:
        s = rate(sum(bool(r["refusal"]) for r in items), len(items))
        s["partial"] = sum(bool(r.get("partial")) for r in items)
        # Rows of runs older than the coherence check count as coherent.
        s["coherent_refusal"] = rate(sum(bool(r["refusal"]) and r.get("coherent", True) for r in items), len(items))
        s["broken"] = rate(sum(not r.get("coherent", True) for r in items), len(items))
        if any("steered" in r for r in items):
            s["steered"] = sum(bool(r.get("steered")) for r in items)
        return s

    summary: dict[str, Any] = {"n_rows": len(rows), "too_long": len(rows) - len(judged),
                               "final_turn_refusal": stats(judged),
                               "intermediate_refusals": sum(r.get("intermediate_refusals", 0) for r in judged),
                               "datasets": {}, "categories": {}, "labels": {}}
    for (kind, key), items in sorted(groups.items()):
        summary[{"dataset": "datasets", "category": "categories", "label": "labels"}[kind]][key] = stats(items)
    return summary
