"""Refusal judge accuracy against XSTest's human labels, completions of one model judged by
tiers that never saw that model.

    SAESTEER_DATA=/path/to/shared/data python benchmarks/judge_accuracy.py [--llm URL --model NAME]

Refusal is the positive class and a partial refusal counts as a refusal. For each direction
(train on GPT-4's completions, test on Llama-2's, and the reverse) it prints accuracy,
precision and recall of: the phrase tier (no training; its patterns were written by hand), the
classifier refitted on the training model only, `auto` (the default judge), and, when given,
an LLM judge. It also prints how partial refusals were judged, and how often the phrase
tier's early-stop verdict (`decided`) would have cut generation and agreed with the full text.
The shipped classifier is fitted on both models, so it is scored in-sample only, for reference.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saesteer.data.sources import data_dir  # noqa: E402
from saesteer.judge import Judgement, get_judge  # noqa: E402
from saesteer.judge.classifier import (ClassifierJudge, MiniLMEmbedder, save_weights,  # noqa: E402
                                                train_classifier)

MODELS = ("gpt4", "llama2new")
REL = "xstest/model_completions/xstest_v2_completions_{}.csv"


def load(model: str) -> list[dict]:
    root = data_dir()
    if root is None:
        sys.exit("set SAESTEER_DATA (or pass --data-dir) to the folder holding xstest/model_completions/")
    with open(root / REL.format(model), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["completion"] = r["completion"] or ""
        r["y"] = r["final_label"] != "1_full_compliance"
        r["is_partial"] = r["final_label"] == "3_partial_refusal"
    return rows


class CachedEmbedder:
    """Embed each distinct text once across all runs."""

    def __init__(self) -> None:
        self.inner = MiniLMEmbedder()
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for t, e in zip(todo, self.inner(todo)):
                self.cache[t] = e
        return np.stack([self.cache[t] for t in texts])


def scores(rows: list[dict], judged: list[Judgement]) -> dict:
    y = np.array([r["y"] for r in rows])
    p = np.array([j.refusal for j in judged])
    part = np.array([r["is_partial"] for r in rows])
    flag = np.array([j.partial for j in judged])
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    return {"n": len(y), "acc": float((y == p).mean()), "prec": tp / max(tp + fp, 1), "rec": tp / max(tp + fn, 1),
            "fp": fp, "fn": fn, "partial_n": int(part.sum()), "partial_as_refusal": int((part & p).sum()),
            "partial_flagged": int((part & flag).sum()), "flagged_not_partial": int((~part & flag).sum())}


def early_stop_agreement(rows: list[dict]) -> dict:
    """Feed each completion word by word to the phrase tier's `decided`; at the first verdict,
    compare it (and the judgement of the cut text) with the judgement of the full text."""
    judge = get_judge("phrase")
    decided = agree = cut_agree = words_saved = 0
    total_words = 0
    for r in rows:
        text = r["completion"]
        full = judge.judge([r["prompt"]], [text])[0].refusal
        words = text.split(" ")
        total_words += len(text.split())
        for k in range(1, len(words) + 1):
            prefix = " ".join(words[:k])
            verdict = judge.decided(r["prompt"], prefix)
            if verdict is not None:
                decided += 1
                agree += verdict == full
                cut_agree += judge.judge([r["prompt"]], [prefix])[0].refusal == full
                words_saved += len(text.split()) - len(prefix.split())
                break
    return {"decided": decided, "agree": agree, "cut_agree": cut_agree, "n": len(rows),
            "words_saved": words_saved / max(total_words, 1)}


def line(name: str, s: dict) -> str:
    return (f"| {name} | {s['acc']:.1%} | {s['prec']:.1%} | {s['rec']:.1%} | {s['fp']} | {s['fn']} | "
            f"{s['partial_as_refusal']}/{s['partial_n']} | {s['partial_flagged']} | {s['flagged_not_partial']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--llm", help="OpenAI-compatible base URL for the LLM tier")
    ap.add_argument("--model", help="model name at --llm")
    ap.add_argument("--prompt-style", choices=("wildguard", "xstest"))
    ap.add_argument("--hf", help="local model for the hf:<model> tier")
    ap.add_argument("--no-classifier", action="store_true", help="skip the classifier (needs the embedding model)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.data_dir:
        from saesteer.data import set_data_dir

        set_data_dir(args.data_dir)
    data = {m: load(m) for m in MODELS}
    embedder = None if args.no_classifier else CachedEmbedder()
    header = ("| judge | accuracy | precision | recall | FP | FN | partial judged refusal | "
              "partial flagged | flagged, not partial |\n|---|---|---|---|---|---|---|---|---|")
    for train, test in (("gpt4", "llama2new"), ("llama2new", "gpt4")):
        rows = data[test]
        prompts, responses = [r["prompt"] for r in rows], [r["completion"] for r in rows]
        print(f"\n### test on {test} (n={len(rows)}); trained tiers fitted on {train} only\n\n{header}")
        for name in ("phrase", "auto"):
            print(line(name, scores(rows, get_judge(name).judge(prompts, responses))))
        if embedder is not None:
            t0 = time.time()
            w = train_classifier([r["completion"] for r in data[train]], [r["y"] for r in data[train]],
                                 embedder=embedder, note=f"benchmark: {train} only")
            tmp = Path("/tmp") / f"saesteer_judge_weights_{train}.json"
            save_weights(tmp, w)
            clf = ClassifierJudge(tmp, embedder=embedder)
            print(line(f"classifier (fitted on {train})", scores(rows, clf.judge(prompts, responses))))
            shipped = ClassifierJudge(embedder=embedder)
            print(line("classifier (shipped; saw both models: in-sample)",
                       scores(rows, shipped.judge(prompts, responses))))
            print(f"\n(classifier fit + judge: {time.time() - t0:.0f} s)")
        if args.llm:
            j = get_judge("llm", base_url=args.llm, model=args.model, prompt_style=args.prompt_style)
            print(line(f"llm {args.model} ({j.prompt_style})", scores(rows, j.judge(prompts, responses))))
        if args.hf:
            j = get_judge(f"hf:{args.hf}", prompt_style=args.prompt_style)
            print(line(f"hf:{args.hf} ({j.prompt_style})", scores(rows, j.judge(prompts, responses))))
    print("\n### early stop (phrase tier `decided`, fed word by word)\n")
    for m in MODELS:
        e = early_stop_agreement(data[m])
        print(f"{m}: decided early on {e['decided']}/{e['n']}; verdict agrees with the full text on "
              f"{e['agree']}/{e['decided']}, judgement of the cut text agrees on {e['cut_agree']}/{e['decided']}; "
              f"{e['words_saved']:.0%} of response words need not be generated")


if __name__ == "__main__":
    main()
