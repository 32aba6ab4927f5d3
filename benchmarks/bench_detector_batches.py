"""Detector passes over prompts of mixed length, side by side in one run: batches of `--batch-size`
rows sorted by length alone against batches that also hold at most a budget of padded tokens,
alternated, medians of `--repeats` runs, and how far the scores move.

    python -m benchmarks.bench_detector_batches --discovery DEMO_OUT/discover [--budgets 0,2048,4096,16384]

The prompts are what a search scores its gates on: plain requests (about 50 tokens), five-shot
multiple-choice questions (about 650) and requests wrapped in jailbreak templates, many-shot
among them (150-700). Budget 0 means rows only, the batching before the budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import alternate, header, median
from saesteer.attacks.catalog import resolve_attacks
from saesteer.data import load_records
from saesteer.evaluate import detector
from saesteer.evaluate.capability_tasks import few_shot_conversations
from saesteer.generate import encode_prompt
from saesteer.models import load_model
from saesteer.search.gates import gate_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--discovery", type=Path, required=True, help="a `saesteer discover` folder (e.g. a demo's)")
    ap.add_argument("--gates", default="sae_probe,probe,sae_probe_window,probe_window")
    ap.add_argument("--budgets", default="0,2048,4096,16384")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    header("bench_detector_batches")
    lm = load_model(args.model)
    specs = [gate_spec(args.discovery, g) for g in args.gates.split(",")]
    requests = [r.text for r in load_records("bundled:harmful@train,bundled:harmless@train,bundled:borderline@train",
                                             limit=32, seed=0)]
    questions = few_shot_conversations(load_records("bundled:mc", limit=40, seed=0), 5)
    wrapped = [a.messages(text) for text in requests[:12]
               for a in resolve_attacks("prefix_injection,evil_confidant,manyshot-4")]
    prompts = [*requests, *questions, *wrapped]
    lengths = sorted(len(encode_prompt(lm, p)) for p in prompts)
    budgets = [int(b) for b in args.budgets.split(",")]
    scores: dict[int, list[list[float]]] = {}

    def case(budget: int):
        def run() -> None:
            detector.DETECTOR_BATCH_TOKENS = budget or 10 ** 12
            scores[budget] = detector.detectors_scores(lm, specs, prompts, batch_size=args.batch_size)
        return run

    times = alternate({b: case(b) for b in budgets}, args.repeats)
    base = median(times[budgets[0]])
    print(f"{len(prompts)} prompts ({len(requests)} requests, {len(questions)} five-shot questions, {len(wrapped)} "
          f"wrapped), {sum(lengths):,} tokens, {lengths[0]}-{lengths[-1]} each; {len(specs)} gates; at most "
          f"{args.batch_size} rows per batch; median of {args.repeats}")
    print("| padded tokens per batch | seconds (median) | speed-up vs the first | largest score change |")
    print("|---|---|---|---|")
    for b in budgets:
        t = median(times[b])
        change = max(abs(x - y) for a, c in zip(scores[b], scores[budgets[0]]) for x, y in zip(a, c))
        print(f"| {b or 'rows only'} | {t:.1f} | {base / t:.2f}x | {change:.1e} |")


if __name__ == "__main__":
    main()
