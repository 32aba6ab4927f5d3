"""The `run.json` of an evaluation folder: a rerun resumes only the run that wrote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.files import read_json, read_jsonl


def previous_run(out: Path, run_info: dict[str, Any], model_id: str,
                 keys: tuple[str, ...] = ("spec_hash", "settings")) -> dict[str, Any] | None:
    """The folder's earlier `run.json`, or None; fails if it differs in `keys` or in the model."""
    path = out / "run.json"
    if not path.exists():
        return None
    previous = read_json(path)
    if not isinstance(previous, dict) or not isinstance(previous.get("model", {}), dict):
        raise SaesteerError(f"{path} is not a run record (a JSON object); delete it (or the folder) to start over")
    for key in keys:
        before, now = previous.get(key), run_info.get(key)
        if before != now:
            what = f"{key} differs"
            if isinstance(before, dict) and isinstance(now, dict):
                changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
                what = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed[:3]) or what
            raise SaesteerError(f"{out} holds results of a different run ({what}); "
                                "use a new --out or delete the folder")
    if previous.get("model", {}).get("model_id") != model_id:
        raise SaesteerError(f"{out} holds results for {previous['model'].get('model_id')}; use a new --out")
    return previous


def finished_rows(path: Path, keys: tuple[str, ...] = ("id",)) -> list[dict[str, Any]]:
    """The rows an earlier run of this folder wrote (none if `path` is missing); each must hold `keys`."""
    if not path.exists():
        return []
    rows = read_jsonl(path, tolerate_torn_tail=True)
    for n, row in enumerate(rows, 1):
        missing = [k for k in keys if not isinstance(row.get(k), str)]
        if missing:
            raise SaesteerError(f"{path}: row {n} has no {missing[0]!r}, so it is not a row saesteer wrote; "
                                "delete that line (or the file) and rerun")
    return rows


def is_unsteered_twin(folder: Path, run_info: dict[str, Any]) -> bool:
    """Whether `folder` holds an unsteered run of the same model and settings as `run_info`, whose
    rows a gated run may take for the prompts its gate leaves alone."""
    path = folder / "run.json"
    info = read_json(path) if path.exists() else None
    return (isinstance(info, dict) and info.get("spec_hash") is None and info.get("settings") == run_info["settings"]
            and info.get("model") == run_info["model"])
