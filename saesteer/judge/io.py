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


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, row) of a JSON-lines or CSV file."""
    import csv
    import io
    import json

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SaesteerError(f"{path} is not UTF-8 text ({e.reason})") from e
    if path.suffix.lower() == ".csv":
        return [(n, row) for n, row in enumerate(csv.DictReader(io.StringIO(text)), 2)]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise SaesteerError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be an object "
                                "with 'prompt' and 'response' (or give a .csv with those columns)") from e
    return rows


def _prompt_text(value: Any) -> Any:
    """A prompt given as chat messages is judged by its last user turn."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        return users[-1] if users else None
    return value


def read_pairs(path: str | Path) -> list[Pair]:
    """Read (prompt, response) pairs from JSON lines or CSV; a malformed row is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SaesteerError(f"input file not found: {path}" + (" (it is a folder; give a .jsonl file)"
                                                               if path.is_dir() else ""))
    pairs: list[Pair] = []
    for n, row in _rows(path):
        if not isinstance(row, dict):
            raise SaesteerError(f"{path}:{n}: expected a JSON object with 'prompt' and 'response'")
        response = row.get("response", row.get("completion"))
        prompt = _prompt_text(row.get("prompt"))
        for key, value in (("prompt", prompt), ("response", response)):
            if key not in row and not (key == "response" and "completion" in row):
                raise SaesteerError(f"{path}:{n}: missing '{key}'")
            if value is None:
                raise SaesteerError(f"{path}:{n}: '{key}' is null; give its text ('' if it is empty)")
            if not isinstance(value, str):
                raise SaesteerError(f"{path}:{n}: '{key}' must be a string (or, for the prompt, a list of chat "
                                    f"messages), not {type(value).__name__}")
        pairs.append(Pair(n, row, prompt, response))
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
        if row.get("prompt") != pair.row.get("prompt") or "refusal" not in row \
                or row.get("response", row.get("completion")) != pair.response:
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
    if out.exists() and out.resolve() == Path(input_path).resolve():
        raise SaesteerError(f"--out {out} is the input file; write the verdicts to another file")
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
