"""What every attack shares: the run folder (open, resume, finished rows), the steered target's
next turn, the refusal judge, and reading JSON out of a model's free-text reply."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saesteer.evaluate.rundir import finished_rows, previous_run
from saesteer.files import ensure_dir, write_json
from saesteer.generate import GenerationConfig, Generation, OnDone, encode_prompt, generate
from saesteer.models import ChatModel, Conversation
from saesteer.steer import Steering, SteeringSpec

ROWS = "conversations.jsonl"
"""One row per conversation (transcript, per-turn judgements), appended as each one ends."""


# --- the run folder and the target ---------------------------------------------------------------

def refusal_judge(name: str = "auto") -> Any:
    from saesteer.judge import get_judge

    return get_judge(name)


def judge_name(judge: Any) -> str:
    return str(getattr(judge, "name", type(judge).__name__))


def open_run(out: str | Path, lm: ChatModel, info: dict[str, Any]) -> Path:
    """Create `out`, or check that it holds the same run (same settings, spec and model) to resume."""
    out = ensure_dir(out)
    info = {"model": lm.describe(), **info}
    if previous_run(out, info, lm.model_id, keys=("mode", "spec_hash", "settings")) is None:
        write_json(out / "run.json", info)
    return out


def finished_ids(out: Path) -> set[str]:
    path = out / ROWS
    return {row["id"] for row in finished_rows(path)}


@contextlib.contextmanager
def _maybe(steering: Steering | None) -> Iterator[None]:
    if steering is None:
        yield
    else:
        with steering.active():
            yield


def generate_turns(lm: ChatModel, conversations: list[Conversation], config: GenerationConfig,
                   steering: Steering | None, *,
                   on_done: OnDone | None = None) -> tuple[list[Generation], list[bool] | None]:
    """One batched generation of the next assistant turn of each conversation, steered if asked.

    Conditional steering decides per conversation from everything in it; the decisions come back
    as the second value (None without a condition). `on_done(i, generation)` hears of each
    conversation's turn as it finishes.
    """
    if not conversations:
        return [], None
    with _maybe(steering):
        gens = generate(lm, conversations, config, on_done=on_done)
    gate = steering.gate if steering is not None else None
    decisions = [bool(gate.decisions.get(i, False)) for i in range(len(conversations))] if gate else None
    return gens, decisions


def fits(lm: ChatModel, conversation: Conversation, config: GenerationConfig) -> bool:
    """Whether the conversation plus `max_new_tokens` fits the model's context."""
    ids = encode_prompt(lm, conversation, chat=True, system=config.system)
    return len(ids) + config.max_new_tokens <= lm.context_length


def load_steering(lm: ChatModel, spec: SteeringSpec | str | Path | None) -> Steering | None:
    return Steering(lm, spec) if spec is not None else None   # every check before any generation


# --- reading model replies ----------------------------------------------------------------------

def json_objects(text: str) -> list[dict]:
    """Every JSON object embedded in free text, in order (models wrap their JSON in prose)."""
    decoder = json.JSONDecoder()
    out = []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text[m.start():])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
