"""The refusal judge: is a response a refusal? In tiers, behind one small protocol.

* `phrase`: phrase and pattern matching (`judge_phrases`), transparent and instant.
* `classifier`: logistic regression on phrase features and a sentence embedding of the
  response's opening (`judge_classifier`), shipped fitted, refittable on your labels.
* `llm`: any OpenAI-compatible endpoint (WildGuard or XSTest-style prompt); `hf:<model>`: a
  local Hugging Face model with the same prompts (`judge_llm`).
* `auto` (the default): the best offline tier by the measurements in docs/RESULTS.md, which
  is the phrase tier (the classifier measured no better on completions of unseen models).

Partial refusals count as refusals (the paper's convention); `Judgement.partial` reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saesteer.errors import SaesteerError
from saesteer.evaluate.judge_phrases import COMPLIANCE_WORDS, phrase_decided, phrase_verdict


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


class PhraseJudge:
    """Tier (a): phrase and pattern matching."""

    name = "phrase"

    def __init__(self, compliance_words: int = COMPLIANCE_WORDS):
        self.compliance_words = compliance_words

    def judge(self, prompts: list[str], responses: list[str]) -> list[Judgement]:
        _check_pairs(prompts, responses)
        out = []
        for response in responses:
            v = phrase_verdict(response)
            out.append(Judgement(v.refusal, v.partial, v.score, "phrase", v.evidence))
        return out

    def decided(self, prompt: str, partial_response: str) -> bool | None:
        return phrase_decided(partial_response, self.compliance_words)


def _check_pairs(prompts: list[str], responses: list[str]) -> None:
    if len(prompts) != len(responses):
        raise SaesteerError(f"{len(prompts)} prompts but {len(responses)} responses")


# name -> (factory, one-line description). `hf:<model>` is handled apart.
_REGISTRY: dict[str, tuple[Callable[..., Judge], str]] = {}


def register_judge(name: str, description: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    def wrap(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        _REGISTRY[name] = (factory, description)
        return factory
    return wrap


@register_judge("phrase", "phrase and pattern matching (offline, instant)")
def _phrase(**options: Any) -> Judge:
    return PhraseJudge(**options)


@register_judge("auto", "the best offline tier as measured (now: phrase)")
def _auto(**options: Any) -> Judge:
    judge = PhraseJudge(**options)
    judge.name = "auto"
    return judge


@register_judge("classifier", "logistic regression on phrase features + MiniLM embedding (offline, CPU)")
def _classifier(**options: Any) -> Judge:
    from saesteer.evaluate.judge_classifier import ClassifierJudge

    return ClassifierJudge(**options)


@register_judge("llm", "an OpenAI-compatible endpoint (--endpoint, --model; wildguard or xstest prompt)")
def _llm(**options: Any) -> Judge:
    from saesteer.evaluate.judge_llm import LLMJudge

    return LLMJudge.from_endpoint(**options)


DEFAULT_JUDGE = "auto"


def judge_names() -> list[str]:
    return sorted(_REGISTRY) + ["hf:<model>"]


def describe_judges() -> str:
    lines = [f"{name}: {desc}" for name, (_, desc) in sorted(_REGISTRY.items())]
    return "; ".join(lines + ["hf:<model>: a local Hugging Face model as LLM judge"])


def get_judge(name: str = DEFAULT_JUDGE, **options: Any) -> Judge:
    """A judge by name: auto, phrase, classifier, llm or hf:<model path or alias>.

    Options go to the judge (for llm: base_url, model, api_key, prompt_style, ...; for
    classifier: weights; for hf: prompt_style, device, dtype). Options set to None are dropped.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if name.startswith("hf:") and len(name) > 3:
        from saesteer.evaluate.judge_llm import LLMJudge

        return LLMJudge.from_hf(name[3:], **options)
    if name not in _REGISTRY:
        raise SaesteerError(f"unknown judge {name!r}; valid judges: {', '.join(judge_names())}")
    factory, _ = _REGISTRY[name]
    try:
        return factory(**options)
    except TypeError as e:
        raise SaesteerError(f"judge {name!r} does not take these options ({e})") from e


# --- judging files ---------------------------------------------------------------------------

OUTPUT_FIELDS = ("refusal", "partial", "label", "score", "tier", "evidence", "judge")


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
    kill loses nothing judged.
    """
    from saesteer.files import JsonlAppender

    pairs = read_pairs(input_path)
    out = Path(out_path)
    done = _finished_rows(out, pairs)
    todo = pairs[done:]
    counts = {"rows": len(pairs), "skipped": done, "judged": 0, "refusals": 0, "partial": 0}
    with JsonlAppender(out) as writer:
        for batch in _chunks(todo, batch_size):
            judgements = judge.judge([p.prompt for p in batch], [p.response for p in batch])
            for pair, j in zip(batch, judgements, strict=True):
                writer.write(_output_row(pair, j, judge.name))
                counts["judged"] += 1
                counts["refusals"] += j.refusal
                counts["partial"] += j.partial
            if progress is not None:
                progress(done + counts["judged"], len(pairs))
    return counts


def iter_labelled(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str, bool, bool]]:
    """(prompt, response, refusal, partial) from labelled rows: XSTest's `final_label`
    (1_full_compliance / 2_full_refusal / 3_partial_refusal), or a boolean `refusal` (with an
    optional boolean `partial`), or `label` in full_compliance / full_refusal / partial_refusal."""
    for n, row in enumerate(rows, 1):
        response = row.get("response", row.get("completion"))
        prompt = row.get("prompt", "")
        if not isinstance(response, str):
            raise SaesteerError(f"labelled row {n}: missing 'response' (or 'completion')")
        label = row.get("final_label", row.get("label"))
        if isinstance(row.get("refusal"), bool):
            yield prompt, response, row["refusal"], bool(row.get("partial", False))
        elif isinstance(label, str) and any(k in label for k in ("compliance", "refusal")):
            partial = "partial" in label
            yield prompt, response, partial or "full_refusal" in label, partial
        else:
            raise SaesteerError(f"labelled row {n}: needs a boolean 'refusal' or a 'final_label' / "
                                "'label' of full_compliance, full_refusal or partial_refusal")
