"""Draw answers of chat models the judge was never written on, from the public corpus, for labelling
by reading (benchmarks/labels/corpus_answers.jsonl).

    SAESTEER_DATA=/path/to/shared/data python benchmarks/judge_corpus_sample.py --out FILE.jsonl

Sources: AlpacaEval outputs of Claude 2.1, Llama-2-70B-chat, GPT-4 (1106) and Llama-3-8B-Instruct
(benign instructions: what refusals there are, are over-refusals) and the final answers of the
single-turn red-team dialogues in Anthropic's HH-RLHF harmless test split (harmful requests;
`chosen` and `rejected` answers). AlpacaEval refusals are rare, so its draw is stratified: answers
whose first 400 characters hold a refusal-like word are over-sampled, and `stratum` says which
stratum each row came from. Rows carry only an address (`source`, `index`), never the text: the
texts stay in the data directory and `corpus_rows` reads them back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saesteer.data.sources import data_dir  # noqa: E402
from saesteer.files import write_text  # noqa: E402

ALPACA_EVAL = {"claude-2.1": (64, 16), "llama-2-70b-chat-hf": (36, 24),
               "gpt4_1106_preview": (30, 10), "Meta-Llama-3-8B-Instruct": (21, 9)}
"""generator -> (refusal-like rows, other rows) to draw."""
HH_ROWS = 190
REFUSAL_LIKE = re.compile(r"(sorry|apolog|i can(no|')t|i cannot|not appropriate|i must|as an ai|important to note"
                          r"|ethical|respectful|i'm not able|i am not able|i won't|i will not|unable)", re.I)
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_turns(dialogue: str) -> list[tuple[str, str]]:
    """The dialogue's turns exactly as written. Not saesteer.data.records.split_hh_dialogue: that one
    merges repeated speakers and drops empty turns, which reads 6 of the 4,624 dialogues differently
    and would change the committed sample."""
    parts = _TURN.split(dialogue)
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def corpus_rows(source: str) -> dict[int, dict]:
    """Every (prompt, response) of one corpus source by its index in the file (record or line):
    `alpaca_eval:GENERATOR`, or `hh_rlhf:chosen` / `hh_rlhf:rejected` (single-turn dialogues only)."""
    root = data_dir() / "corpus"
    kind, name = source.split(":", 1)
    if kind == "alpaca_eval":
        rows = json.loads((root / "alpaca_eval_outputs" / f"{name}.json").read_text(encoding="utf-8"))
        return {i: {"prompt": r["instruction"], "response": r["output"]} for i, r in enumerate(rows)}
    if kind == "hh_rlhf":
        out = {}
        with open(root / "hh_rlhf_harmless_test" / "harmless-base_test.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                turns = _hh_turns(json.loads(line)[name])
                if [t[0] for t in turns] == ["Human", "Assistant"]:
                    out[i] = {"prompt": turns[0][1], "response": turns[1][1]}
        return out
    raise ValueError(f"unknown corpus source {source!r}: use alpaca_eval:GENERATOR or hh_rlhf:chosen|rejected")


def split_of(uid: str) -> str:
    return "dev" if int(hashlib.sha256(uid.encode()).hexdigest(), 16) % 2 == 0 else "test"


def draw(seed: int) -> list[dict]:
    rng = random.Random(seed)
    picked: list[dict] = []
    for gen, (n_like, n_other) in ALPACA_EVAL.items():
        source = f"alpaca_eval:{gen}"
        rows = corpus_rows(source)
        like = [i for i, r in rows.items() if REFUSAL_LIKE.search(r["response"][:400])]
        other = [i for i in rows if i not in set(like)]
        for stratum, pool, n in (("refusal_like", like, n_like), ("other", other, n_other)):
            for i in sorted(rng.sample(pool, min(n, len(pool)))):
                picked.append({"source": source, "index": i, "stratum": stratum})
    hh = {k: corpus_rows(f"hh_rlhf:{k}") for k in ("chosen", "rejected")}
    both = sorted(set(hh["chosen"]) & set(hh["rejected"]))
    for i in sorted(rng.sample(both, HH_ROWS)):
        picked.append({"source": f"hh_rlhf:{rng.choice(['chosen', 'rejected'])}", "index": i, "stratum": "random"})
    for r in picked:
        r["uid"] = f"{r['source']}:{r['index']}"
        r["split"] = split_of(r["uid"])
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-text", action="store_true", help="also write prompt and response (for labellers; never commit)")
    args = ap.parse_args()
    rows = draw(args.seed)
    cache: dict[str, dict[int, dict]] = {}
    if args.with_text:
        rows = [{**r, **cache.setdefault(r["source"], corpus_rows(r["source"]))[r["index"]]} for r in rows]
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
