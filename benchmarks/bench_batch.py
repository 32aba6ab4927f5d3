"""Rows per batch, side by side in one run: `evaluate_refusal` on the demo's test prompts at
several batch sizes, alternated, medians of `--repeats` runs, and whether the answers agree.

    python benchmarks/bench_batch.py [--sizes 16,32,64] [--repeats 3] [--limit 24] [--max-new-tokens 48]

Decoding a small model on a CPU reads every weight once per step for the whole batch, so more
rows per batch answer faster until the matrix products become compute-bound.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import alternate, header, median
from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
from saesteer.files import read_jsonl
from saesteer.models import load_model

DEMO_TEST = "bundled:harmful@test,bundled:harmless@test,bundled:borderline@test"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default=DEMO_TEST)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--sizes", default="16,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("bench_batch")
    lm = load_model(args.model)
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp())
    answers: dict[int, list[str]] = {}

    def case(size: int):
        def run() -> None:
            out = root / str(size)
            shutil.rmtree(out, ignore_errors=True)
            evaluate_refusal(lm, out, RefusalEvalConfig(datasets=args.dataset, limit=args.limit, seed=0,
                                                        max_new_tokens=args.max_new_tokens, batch_size=size),
                             progress=False)
            answers[size] = [row["response"] for row in read_jsonl(out / "responses.jsonl")]
        return run

    times = alternate({f"batch {s}": case(s) for s in sizes}, args.repeats)
    n = len(answers[sizes[0]])
    base = median(times[f"batch {sizes[0]}"])
    print(f"{n} prompts, up to {args.max_new_tokens} new tokens, greedy, early stop; median of {args.repeats}")
    print("| rows per batch | seconds (median) | prompts/min | speed-up vs the first | answers equal to the first |")
    print("|---|---|---|---|---|")
    for s in sizes:
        t = median(times[f"batch {s}"])
        same = sum(a == b for a, b in zip(answers[s], answers[sizes[0]]))
        print(f"| {s} | {t:.1f} | {60 * n / t:.0f} | {base / t:.2f}x | {same}/{n} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
