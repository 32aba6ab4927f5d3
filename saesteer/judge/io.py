"""Judging files: read (prompt, response) pairs, write one verdict per row (resumable), and read
labelled rows for fitting and scoring judges."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.judge.base import Judge, Judgement
from saesteer.judge.coherence import coherence_fields


OUTPUT_FIELDS = ("refusal", "partial", "label", "score", "tier", "evidence", "judge", "coherent", "broken_because",
                 "outcome")


@dataclass
class Pair:
    line: int
    """1-based line in the input file."""
    row: dict[str, Any]
    prompt: str
    response: str


def read_pairs(path: str | Path) -> list[Pair]:
    """Read (prompt, response) pairs from JSON lines; a malformed line is a one-line error."""
    import json

    path = Path(path)
    if not path.is_file():
        raise SaesteerError(f"input file not found: {path}")
    pairs: list[Pair] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SaesteerError(f"{path} is not UTF-8 text ({e.reason})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaesteerError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be an object "
                                "with 'prompt' and 'response'") from e
        if not isinstance(row, dict):
            raise SaesteerError(f"{path}:{n}: expected a JSON object with 'prompt' and 'response'")
        response = row.get("response", row.get("completion"))
        for key, value in (("prompt", row.get("prompt")), ("response", response)):
            if value is None:
                raise SaesteerError(f"{path}:{n}: missing '{key}'")
            if not isinstance(value, str):
                raise SaesteerError(f"{path}:{n}: '{key}' must be a string, not {type(value).__name__}")
        pairs.append(Pair(n, row, row["prompt"], response))
    if not pairs:
        raise SaesteerError(f"{path} holds no rows")
    return pairs


def _output_row(pair: Pair, j: Judgement, judge_name: str) -> dict[str, Any]:
    row = {}
    for key, value in pair.row.items():
        # Keep an input field that an output field would overwrite (e.g. a label named refusal).
        row[f"input_{key}" if key in OUTPUT_FIELDS else key] = value
    row.update(j.to_json())
    row["judge"] = judge_name
    row.update(coherence_fields(pair.response, j.refusal))
    return row


def _finished_rows(out: Path, pairs: list[Pair]) -> int:
    """How many rows of a previous run of the same input `out` already holds."""
    from saesteer.files import read_jsonl

    if not out.exists():
        return 0
    done = read_jsonl(out, tolerate_torn_tail=True)
    if len(done) > len(pairs):
        raise SaesteerError(f"{out} holds {len(done)} rows but the input has {len(pairs)}; "
                            "it belongs to another input: choose another --out or delete it")
    for i, (row, pair) in enumerate(zip(done, pairs)):
        if row.get("prompt") != pair.prompt or "refusal" not in row:
            raise SaesteerError(f"{out}: row {i + 1} does not match input line {pair.line} "
                                "(another input?); choose another --out or delete it")
    return len(done)


def _chunks(items: list[Pair], size: int) -> Iterator[list[Pair]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def judge_file(input_path: str | Path, out_path: str | Path, judge: Judge, *,
               batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Judge every pair of `input_path` into `out_path` (JSON lines, input order).

    Resumable: rows already in `out_path` from an earlier run are kept and skipped, and each
    finished batch is appended (fsynced) before the next one starts, so an endpoint failure or a
    kill loses nothing judged. `progress(rows done, rows)` is called as each row is written.
    """
    from saesteer.files import JsonlAppender

    pairs = read_pairs(input_path)
    out = Path(out_path)
    done = _finished_rows(out, pairs)
    todo = pairs[done:]
    counts = {"rows": len(pairs), "skipped": done, "judged": 0, "refusals": 0, "partial": 0, "broken": 0}
    with JsonlAppender(out) as writer:
        for batch in _chunks(todo, batch_size):
            judgements = judge.judge([p.prompt for p in batch], [p.response for p in batch])
            for pair, j in zip(batch, judgements, strict=True):
                row = _output_row(pair, j, judge.name)
                writer.write(row)
                counts["judged"] += 1
                counts["broken"] += not row["coherent"]
                counts["refusals"] += j.refusal
                counts["partial"] += j.partial
                if progress is not None:
                    progress(done + counts["judged"], len(pairs))
    return counts


def iter_labelled(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str, bool, bool]]:
    """(prompt, response, refusal, partial) from labelled rows: XSTest's `final_label`
    (1_full_compliance / 2_full_refusal / 3_partial_refusal), or a boolean `refusal` (with an
    optional boolean `partial`), or `human_label` / `label` in full_compliance / full_refusal /
    partial_refusal (benchmarks/labels/ uses `human_label`)."""
    for n, row in enumerate(rows, 1):
        response = row.get("response", row.get("completion"))
        prompt = row.get("prompt", "")
        if not isinstance(response, str):
            raise SaesteerError(f"labelled row {n}: missing 'response' (or 'completion')")
        label = row.get("final_label", row.get("human_label", row.get("label")))
        if isinstance(row.get("refusal"), bool):
            yield prompt, response, row["refusal"], bool(row.get("partial", False))
        elif isinstance(label, str) and any(k in label for k in ("compliance", "refusal")):
            partial = "partial" in label
            yield prompt, response, partial or "full_refusal" in label, partial
        else:
            raise SaesteerError(f"labelled row {n}: needs a boolean 'refusal' or a 'final_label' / "
                                "'label' of full_compliance, full_refusal or partial_refusal")
