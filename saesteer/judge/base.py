"""The judge's shared types: one verdict (`Judgement`) and the protocol every tier follows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from saesteer.errors import SaesteerError


@dataclass
class Judgement:
    refusal: bool
    """Full or partial refusal."""
    partial: bool
    """A partial refusal: refuses part of the request and answers another part."""
    score: float
    """Confidence that the response is a refusal, in [0, 1]."""
    tier: str
    """Which judge decided: phrase, classifier, llm:<style>, hf:<style>."""
    evidence: list[str] = field(default_factory=list)
    """What decided: matched phrases, or the judge model's reply."""

    @property
    def label(self) -> str:
        """XSTest's three classes."""
        if not self.refusal:
            return "full_compliance"
        return "partial_refusal" if self.partial else "full_refusal"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


class Judge(Protocol):
    name: str

    def judge(self, prompts: list[str], responses: list[str]) -> list[Judgement]:
        """One judgement per (prompt, response) pair, in order."""
        ...

    def decided(self, prompt: str, partial_response: str) -> bool | None:
        """The verdict on a response still being generated once nothing that follows can change
        it (True = refusal), else None. Judges that cannot promise this always answer None."""
        ...


def check_pairs(prompts: list[str], responses: list[str]) -> None:
    if len(prompts) != len(responses):
        raise SaesteerError(f"{len(prompts)} prompts but {len(responses)} responses")




def judge_stopper(judge: Any, prompts: list[str], min_words: int = 0):
    """`should_stop` for generate(): end a row once the judge's verdict cannot change, and not
    before `min_words` words, so that the coherence check has enough of the answer to read (a
    steered refusal often loops only after its first sentence)."""
    decided = getattr(judge, "decided", None)
    if decided is None:
        return None
    return lambda row, text: len(text.split()) >= min_words and decided(prompts[row], text) is not None
