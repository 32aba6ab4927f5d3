"""Would a fitted coherence check catch more broken answers than the hand-set thresholds?

The check in `saesteer/judge/coherence.py` flags an answer as broken when one of its text
statistics crosses a threshold set on smollm2's dev half. This script fits a logistic regression
on the same statistics and four more (share of repeated word pairs, the count of the most repeated
4-gram, the share of sentences that open with the words of an earlier one, the sentence count) and
scores it leave one labelled file out (Qwen's two files leave each other out too), alone and added
to the check (broken when either says so), at several probability thresholds.

    python benchmarks/coherence_fit.py
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from saesteer.judge.coherence import _WORD, check_coherence, coherence_stats

LABELS = Path(__file__).with_name("labels")
FILES = ("smollm2_answers.jsonl", "smollm2_saeadd_answers.jsonl", "smollm2_demo_answers.jsonl",
         "smollm2_demo_pick_answers.jsonl", "smollm2_demo_pick2_answers.jsonl", "qwen_answers.jsonl",
         "qwen_guardrail_answers.jsonl")
THRESHOLDS = (0.5, 0.7, 0.85)


def load(file: str) -> list[tuple[str, bool]]:
    """(answer, broken by hand) for every answer of `file` with a coherence label."""
    rows = [json.loads(line) for line in (LABELS / file).read_text(encoding="utf-8").splitlines()]
    return [(r["response"], not r["coherent"]) for r in rows if r.get("coherent") is not None]


def features(text: str) -> list[float]:
    s = coherence_stats(text)
    words = [w.lower() for w in _WORD.findall(text)]
    pairs = list(zip(words, words[1:]))
    fours = Counter(zip(words, words[1:], words[2:], words[3:]))
    sents = [x for x in re.split(r"(?<=[.!?])\s+", text.strip()) if x]
    openings = [" ".join(_WORD.findall(x.lower())[:3]) for x in sents]
    return [s.repeated_trigrams, min(s.longest_run, 6), s.top_word_share, s.compression, s.letters,
            s.repeated_lines, s.distinct_words, min(s.words, 200) / 200,
            (len(pairs) - len(set(pairs))) / len(pairs) if pairs else 0.0,
            max(fours.values()) if fours else 0,
            (len(openings) - len(set(openings))) / len(openings) if len(openings) >= 2 else 0.0, len(sents)]


def fit_predict(train: list[tuple[str, bool]], test: list[tuple[str, bool]]) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x = np.array([features(t) for t, _ in train])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=5000, class_weight="balanced").fit((x - mu) / sd, [b for _, b in train])
    return clf.predict_proba((np.array([features(t) for t, _ in test]) - mu) / sd)[:, 1]


def cell(truth: np.ndarray, pred: np.ndarray) -> str:
    caught, flagged = int((pred & truth).sum()), int((pred & ~truth).sum())
    return f"{(pred == truth).mean():.1%} ({caught}/{int(truth.sum())}, {flagged})"


def main() -> None:
    sets = {f: load(f) for f in FILES}
    print("| held-out file | answers | the check | " + " | ".join(f"check or fitted p >= {t}" for t in THRESHOLDS)
          + " |")
    print("|---|---|---|" + "---|" * len(THRESHOLDS))
    for held, test in sets.items():
        train = [r for f, rows in sets.items() if f != held and not (f[:4] == held[:4] == "qwen") for r in rows]
        truth = np.array([b for _, b in test])
        check = np.array([not check_coherence(t).coherent for t, _ in test])
        p = fit_predict(train, test)
        cells = [cell(truth, check | (p >= t)) for t in THRESHOLDS]
        print(f"| {held} | {len(test)} | {cell(truth, check)} | " + " | ".join(cells) + " |")
    print("\ncells: agreement with the hand labels (broken caught / broken by hand, coherent answers flagged)")


if __name__ == "__main__":
    main()
