"""The `run.json` of an evaluation folder: a rerun resumes only the run that wrote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.files import read_json


def previous_run(out: Path, run_info: dict[str, Any], model_id: str,
                 keys: tuple[str, ...] = ("spec_hash", "settings")) -> dict[str, Any] | None:
    """The folder's earlier `run.json`, or None; fails if it differs in `keys` or in the model."""
    path = out / "run.json"
    if not path.exists():
        return None
    previous = read_json(path)
    for key in keys:
        if previous.get(key) != run_info.get(key):
            raise SaesteerError(f"{out} holds results of a different run ({key} differs); "
                                "use a new --out or delete the folder")
    if previous.get("model", {}).get("model_id") != model_id:
        raise SaesteerError(f"{out} holds results for {previous['model'].get('model_id')}; use a new --out")
    return previous
