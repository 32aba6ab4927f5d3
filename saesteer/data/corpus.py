"""Training text for SAEs: chat conversations and plain documents, mixed and shuffled.

A document is either a conversation (rendered later with the model's own chat template, as
the paper did for all of its SAE data) or plain text. `corpus_documents("corpus")` reads the
chat + web-text mixture of a data directory laid out like `shared/data/corpus`; any dataset
name from the registry also works (its prompts become one-turn chats).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from saesteer.data.records import conversation, merge_same_role, split_hh_dialogue
from saesteer.data.sources import data_dir
from saesteer.errors import SaesteerError
from saesteer.models import Conversation

Document = Conversation | str
CHUNK_CHARS = 3000
"""Long books and articles are cut into paragraph-aligned pieces of about this many characters."""


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut text into paragraph-aligned chunks of about `size` characters."""
    chunks, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if current and len(current) + len(para) > size:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _hh(root: Path) -> Iterator[Document]:
    for row in _jsonl(root / "hh_rlhf_harmless_test" / "harmless-base_test.jsonl"):
        yield split_hh_dialogue(row["chosen"])


def _alpaca_eval(root: Path) -> Iterator[Document]:
    for path in sorted((root / "alpaca_eval_outputs").glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            yield conversation(("user", row["instruction"]), ("assistant", row["output"]))


def _arena_hard(root: Path) -> Iterator[Document]:
    base = root / "arena_hard_answers"
    questions = {q["question_id"]: q["turns"][0]["content"] for q in _jsonl(base / "question.jsonl")}
    for path in sorted((base / "model_answer").glob("*.jsonl")):
        for row in _jsonl(path):
            q = questions.get(row["question_id"])
            if q:
                yield conversation(("user", q), ("assistant", row["choices"][0]["turns"][0]["content"]))


def _qlora(root: Path) -> Iterator[Document]:
    for row in _jsonl(root / "qlora_oasst_eval" / "gpt-3.5-oa-generations.jsonl"):
        if row.get("lang", "en") != "en":
            continue
        turns = split_hh_dialogue(row["input"])
        if turns and turns[-1]["role"] == "user" and row.get("output"):
            turns.append({"role": "assistant", "content": row["output"].strip()})
        if turns:
            yield turns


def _oasst(root: Path) -> Iterator[Document]:
    for row in _jsonl(root / "oasst_en_100" / "en_100_tree.jsonl"):
        node, turns = row["prompt"], []
        while node:
            turns.append(("user" if node["role"] == "prompter" else "assistant", node["text"]))
            replies = sorted(node.get("replies") or [], key=lambda r: r.get("rank") if r.get("rank") is not None else 99)
            node = replies[0] if replies else None
        yield conversation(*turns)


def _llamafactory_chat(root: Path) -> Iterator[Document]:
    base = root / "llamafactory_demo_chat"
    for row in json.loads((base / "alpaca_en_demo.json").read_text(encoding="utf-8")):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        yield conversation(("user", user), ("assistant", row["output"]))
    for row in json.loads((base / "dpo_en_demo.json").read_text(encoding="utf-8")):
        turns = [("user" if m["from"] == "human" else "assistant", m["value"]) for m in row["conversations"]]
        turns.append(("assistant", row["chosen"]["value"]))
        yield conversation(*merge_same_role(turns))


def _self_instruct(root: Path) -> Iterator[Document]:
    for row in _jsonl(root / "self_instruct_user_oriented" / "user_oriented_instructions.jsonl"):
        for inst in row["instances"]:
            user = row["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            yield conversation(("user", user), ("assistant", inst["output"]))


def _gutenberg(root: Path) -> Iterator[Document]:
    for path in sorted((root / "gutenberg_classics").glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        start = re.search(r"\*\*\* ?START OF.*?\*\*\*", text)
        end = re.search(r"\*\*\* ?END OF", text)
        body = text[start.end() if start else 0:end.start() if end else len(text)]
        yield from chunk_text(body)


def _wikipedia(root: Path) -> Iterator[Document]:
    for row in _jsonl(root / "wikipedia_articles" / "articles.jsonl"):
        body = "\n".join(row["text"].splitlines()[2:])
        yield from chunk_text(body)


def _detokenise_wikitext(text: str) -> str:
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "),
                 (" ; ", "; "), (" : ", ": "), (" 's", "'s"), ("( ", "("), (" )", ")")):
        text = text.replace(a, b)
    return text


def _wikitext(root: Path) -> Iterator[Document]:
    for name in ("valid.txt", "test.txt"):
        text = (root / "wikitext2_valid_test" / name).read_text(encoding="utf-8")
        for article in re.split(r"\n = [^=\n]+ = \n", text):
            if article.strip():
                yield from chunk_text(_detokenise_wikitext(article))


def _llamafactory_text(root: Path) -> Iterator[Document]:
    base = root / "llamafactory_demo_text"
    for row in _jsonl(base / "c4_demo.jsonl"):
        yield row["text"]
    for line in (base / "wiki_demo.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield from chunk_text(line)


CORPUS_SOURCES: dict[str, Callable[[Path], Iterator[Document]]] = {
    "hh_rlhf_harmless_test": _hh,
    "alpaca_eval_outputs": _alpaca_eval,
    "arena_hard_answers": _arena_hard,
    "qlora_oasst_eval": _qlora,
    "oasst_en_100": _oasst,
    "llamafactory_demo_chat": _llamafactory_chat,
    "self_instruct_user_oriented": _self_instruct,
    "gutenberg_classics": _gutenberg,
    "wikipedia_articles": _wikipedia,
    "wikitext2_valid_test": _wikitext,
    "llamafactory_demo_text": _llamafactory_text,
}


def offline_documents() -> list[Document]:
    """A corpus that needs neither network nor data directory (for the demo and tests).

    The bundled prompt sets as one-turn chats and answered with fixed refusal and compliance
    replies (so refusal text is in the SAE's training data, as the paper's chat data ensured),
    plus general technical prose: the Python reference documentation that ships with every
    Python (`pydoc_data.topics`).
    """
    from pydoc_data.topics import topics

    from saesteer.data.registry import load_records
    from saesteer.data.replies import COMPLIANCE_REPLIES, REFUSAL_REPLIES

    docs: list[Document] = []
    for i, r in enumerate(load_records("bundled")):
        docs.append(conversation(("user", r.text)))
        compliance = COMPLIANCE_REPLIES[i % len(COMPLIANCE_REPLIES)]
        docs.append(conversation(("user", r.text), ("assistant", compliance)))
        if r.label == "unsafe":
            for reply in REFUSAL_REPLIES:
                docs.append(conversation(("user", r.text), ("assistant", reply)))
    for name in sorted(topics):
        docs += chunk_text(topics[name])
    return docs


def corpus_documents(spec: str, *, seed: int = 0) -> list[Document]:
    """Documents for harvesting, shuffled with `seed`.

    `corpus` is the whole chat + text mixture of the data directory, `corpus:a+b` some of its
    sources, `offline` the corpus that needs no data at all (see `offline_documents`); anything
    else is a registry dataset (`alpaca`, `bundled`, a file...) whose prompts become one-turn
    chats (conversations are kept as they are). `offline+answers.jsonl` joins several of these
    into one shuffled mixture (for example the offline corpus plus the model's own answers).
    """
    parts = spec.split("+")
    if len(parts) > 1 and not spec.startswith("corpus") and not Path(spec).expanduser().exists():
        docs = [doc for part in parts for doc in corpus_documents(part, seed=seed)]
        random.Random(seed).shuffle(docs)
        return docs
    name, _, subset = spec.partition(":")
    if name == "offline":
        docs = offline_documents()
    elif name == "corpus":
        root = data_dir()
        if root is None:
            raise SaesteerError("the `corpus` dataset needs a data directory: set --data-dir or SAESTEER_DATA "
                                "to a folder with corpus/ (or harvest from a prompt dataset such as bundled)")
        base = root / "corpus"
        names = subset.split("+") if subset else list(CORPUS_SOURCES)
        docs: list[Document] = []
        for source in names:
            if source not in CORPUS_SOURCES:
                raise SaesteerError(f"unknown corpus source {source!r}; known: {', '.join(CORPUS_SOURCES)}")
            try:
                docs += list(CORPUS_SOURCES[source](base))
            except FileNotFoundError as e:
                raise SaesteerError(f"missing file {e.filename} for corpus source {source}") from e
    else:
        from saesteer.data.registry import load_records

        docs = []
        for r in load_records(spec):
            if r.is_conversation:
                docs.append(r.prompt)  # type: ignore[arg-type]
            elif r.reference and not r.choices:
                docs.append(conversation(("user", r.text), ("assistant", r.meta.get("solution", r.reference))))
            else:
                docs.append(conversation(("user", r.text)))
    if not docs:
        raise SaesteerError(f"dataset {spec!r} has no documents")
    random.Random(seed).shuffle(docs)
    return docs
