"""Dataset files into records: read CSV / JSON / JSON lines / text with one clear error for a
bad file, and turn rows of any common layout (prompt keys, chat messages) into `Record`s."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from saesteer.data.records import Record
from saesteer.errors import SaesteerError


def _text(path: Path, encoding: str = "utf-8") -> str:
    """A data file's text; a file in another encoding is a one-line error, not a UnicodeDecodeError."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise SaesteerError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                            "save it as UTF-8") from e


def _csv_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    text = _text(path, encoding)
    return list(csv.DictReader(io.StringIO(text)))


def _json(path: Path) -> Any:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise SaesteerError(f"{path} is not valid JSON ({e.msg}); replace the file") from e


def _get(row: dict[str, str], *keys: str) -> str:
    """First present key, matching case-insensitively (copies differ in header casing)."""
    lowered = {k.lower().strip(): v for k, v in row.items() if k is not None}
    for key in keys:
        if key.lower() in lowered and lowered[key.lower()] is not None:
            return lowered[key.lower()]
    raise SaesteerError(f"expected one of the columns {keys} but found {list(row)}")


# --- safety prompt sets ------------------------------------------------------------------------


PROMPT_KEYS = ("prompt", "instruction", "goal", "behavior", "forbidden_prompt", "request", "query", "question",
               "text", "input")
ID_KEYS = ("id", "behaviorid")
CONTEXT_KEYS = ("contextstring", "context")
"""A document the request refers to (HarmBench's contextual behaviours), put before it as HarmBench does."""
CONVERSATION_KEYS = ("messages", "conversation", "conversations")
LABELS = {"safe": "safe", "unsafe": "unsafe", "harmful": "unsafe", "unharmful": "safe",
          "benign": "safe", "harmless": "safe", "1": "unsafe", "0": "safe", "true": "unsafe", "false": "safe"}


ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _messages(value: list[Any], where: str) -> list[dict[str, str]]:
    """A conversation: role/content messages (ShareGPT's from/value too), with a user turn."""
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise SaesteerError(f"{where}: message {j} is {type(m).__name__} {m!r}, not an object like "
                                '{"role": "user", "content": "..."}')
        role = m.get("role") or SHAREGPT_ROLES.get(str(m.get("from")).lower())
        content = m.get("content", m.get("value"))
        if role not in ROLES:
            raise SaesteerError(f"{where}: message {j} needs a role of {', '.join(ROLES)} "
                                f"(keys 'role' and 'content'), got {dict(m)!r}")
        if not isinstance(content, str):
            raise SaesteerError(f"{where}: message {j} needs text 'content', got {content!r}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in out):
        raise SaesteerError(f"{where}: the conversation has no user message")
    return out


def records_from_rows(rows: list[dict[str, Any]], source: str, skip_empty: bool = False) -> list[Record]:
    """Generic rows → records: finds the prompt (or messages) and an optional safety label. An empty
    prompt is an error (a file to fix), or left out with `skip_empty` (a hub dataset one cannot fix)."""
    out = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if isinstance(row, str):            # a plain list of requests
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise SaesteerError(f"{source}: row {i} is {type(row).__name__} {str(row)[:40]}, not an object; "
                                'write one object per row, like {"prompt": "...", "label": "unsafe"}')
        lowered = {str(k).lower().strip(): v for k, v in row.items()}
        # A conversation under a conversation key, or under `prompt` (a list of messages).
        key = next((k for k in (*CONVERSATION_KEYS, "prompt") if isinstance(lowered.get(k), list)), None)
        prompt: Any
        if key is not None:
            prompt = _messages(lowered[key], f"{source}: row {i}, {key!r}")
        else:
            prompt = next((lowered[k] for k in PROMPT_KEYS if isinstance(lowered.get(k), str)), None)
        if prompt is None:
            wrong = next((k for k in PROMPT_KEYS + CONVERSATION_KEYS if k in lowered), None)
            if wrong is not None:
                raise SaesteerError(f"{source}: row {i}: {wrong!r} is {type(lowered[wrong]).__name__} "
                                    f"{repr(lowered[wrong])[:40]}, expected text or a list of messages")
            raise SaesteerError(f"{source}: row {i} has none of the fields {PROMPT_KEYS + CONVERSATION_KEYS} "
                                f"(it has {list(row)[:8]}); rename the request's column to 'prompt'")
        if isinstance(prompt, str):
            if not prompt.strip() and skip_empty:
                continue
            if not prompt.strip():
                raise SaesteerError(f"{source}: row {i} has an empty prompt; remove the row or fill it in")
            context = next((lowered[k] for k in CONTEXT_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()),
                           None)
            if context is not None:
                prompt = f"{context}\n\n---\n\n{prompt}"
        rid = next((str(lowered[k]) for k in ID_KEYS if lowered.get(k) not in (None, "")), f"{source}-{i}")
        seen[rid] = seen.get(rid, 0) + 1
        if seen[rid] > 1:                   # rows sharing an id (variants of one behaviour) stay apart
            rid = f"{rid}#{seen[rid]}"
        raw_label = next((lowered[k] for k in ("label", "prompt_harm_label", "harmful") if k in lowered), None)
        label = LABELS.get(str(raw_label).lower()) if raw_label is not None else None
        out.append(Record(id=rid, prompt=prompt, source=source,
                          label=label, category=lowered.get("category") or lowered.get("type"),
                          reference=lowered.get("reference") or lowered.get("answer")
                          if isinstance(lowered.get("reference") or lowered.get("answer"), str) else None))
    return out


def local_file(path: Path) -> list[Record]:
    if not path.exists():
        raise SaesteerError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    name = path.stem
    if suffix == ".txt":
        return [Record(id=f"{name}-{i}", prompt=line.strip(), source=name)
                for i, line in enumerate(_text(path).splitlines()) if line.strip()]
    if suffix == ".csv":
        return records_from_rows(_csv_rows(path, encoding="utf-8-sig"), name)
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(_text(path).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SaesteerError(f"{path}:{n} is not valid JSON ({e.msg})") from e
        return records_from_rows(rows, name)
    if suffix == ".json":
        data = _json(path)
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), data)
        if not isinstance(data, list):
            raise SaesteerError(f"{path} holds a JSON {type(data).__name__}; expected a list of rows "
                                "(or an object holding one)")
        return records_from_rows(data, name)
    raise SaesteerError(f"unsupported dataset file type {suffix}; use .jsonl, .json, .csv or .txt")
