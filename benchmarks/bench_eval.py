"""Refusal evaluation throughput, side by side in one run: prompts judged per minute by
`evaluate_refusal` (batched, left-padded, KV cache, each row stopped as soon as the judge's
verdict is certain) vs a sequential `model.generate` loop judged afterwards by the same judge.

    SAESTEER_DATA=../shared/data python benchmarks/bench_eval.py [--prompts 200] [--max-new-tokens 256]

Prints both rates, their ratio and how many judgements agree on the rows both finished (an
early-stopped row is compared on its verdict; the judge's early stop is only taken when the
verdict can no longer change).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.common import header, hf_generate
from saesteer.data import load_records
from saesteer.judge import get_judge
from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
from saesteer.files import read_jsonl
from saesteer.models import load_model


def sequential(lm, prompts: list[str], max_new_tokens: int) -> list[str]:
    return [lm.tokenizer.decode(hf_generate(lm, p, max_new_tokens), skip_special_tokens=True) for p in prompts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="xstest")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--judge", default="auto")
    args = ap.parse_args()
    header("bench_eval")
    lm = load_model(args.model)
    judge = get_judge(args.judge)
    records = load_records(args.dataset, limit=args.prompts, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        config = RefusalEvalConfig(datasets=args.dataset, limit=args.prompts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, judge=args.judge, early_stop=True)
        start = time.perf_counter()
        evaluate_refusal(lm, tmp, config, progress=False)
        ours_s = time.perf_counter() - start
        ours = {row["id"]: row for row in read_jsonl(f"{tmp}/responses.jsonl")}

    start = time.perf_counter()
    texts = sequential(lm, [r.text for r in records], args.max_new_tokens)
    verdicts = judge.judge([r.text for r in records], texts)
    loop_s = time.perf_counter() - start

    n = len(records)
    agree = sum(bool(ours[r.id]["refusal"]) == bool(v.refusal) for r, v in zip(records, verdicts))
    ours_rate, loop_rate = n / ours_s * 60, n / loop_s * 60
    print(f"{n} {args.dataset} prompts, greedy, up to {args.max_new_tokens} new tokens, judge {judge.name}:")
    print(f"  saesteer eval (batch {args.batch_size}, early stop) {ours_rate:7.1f} prompts/min ({ours_s:.0f} s)")
    print(f"  sequential model.generate + judge   {loop_rate:7.1f} prompts/min ({loop_s:.0f} s)")
    print(f"  ratio {ours_rate / loop_rate:.2f}x | same judgement on {agree}/{n} prompts")


if __name__ == "__main__":
    main()
