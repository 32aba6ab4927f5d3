"""The typed record every dataset loader returns, and the conversation helpers that the
registry's loaders and the training corpora share."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from saesteer.models import Conversation, PromptLike

Label = Literal["safe", "unsafe"]


@dataclass
class Record:
    """One evaluation or training item."""

    id: str
    prompt: PromptLike
    """A single user prompt, or a conversation (list of role/content messages)."""
    source: str
    """Dataset name the record came from."""
    label: Label | None = None
    """Whether the prompt should be refused (`unsafe`) or answered (`safe`)."""
    category: str | None = None
    reference: str | None = None
    """Reference answer (GSM8K final number, a chosen response...)."""
    choices: list[str] | None = None
    """Answer options of a multiple-choice item."""
    correct: list[int] | None = None
    """Indices of the correct options (one for MC1/MMLU, several for TruthfulQA MC2)."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_conversation(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def text(self) -> str:
        """The prompt, or the last user message of a conversation."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}


def conversation(*turns: tuple[str, str]) -> Conversation:
    return [{"role": r, "content": c} for r, c in turns]


def split_hh_dialogue(text: str) -> Conversation:
    """'\\n\\nHuman: ... \\n\\nAssistant: ...' (or '### Human:' style) → messages."""
    parts = re.split(r"(?:\n\n|^|\s)(?:###\s*)?(Human|Assistant):\s?", text)
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if content:
            turns.append(("user" if speaker == "Human" else "assistant", content))
    return conversation(*merge_same_role(turns))


def merge_same_role(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive turns of one speaker (dialogue dumps repeat speakers; chat templates refuse that)."""
    merged: list[tuple[str, str]] = []
    for role, content in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + content)
        else:
            merged.append((role, content))
    return merged
