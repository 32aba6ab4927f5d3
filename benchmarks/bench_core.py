"""Core throughput, measured side by side in one run:

1. harvesting (forward stopped after the hooked layer) vs a full forward over the same batches;
2. our batched greedy generation at batch 1, 8 and 32 vs a one-prompt-at-a-time
   `model.generate` loop over the same prompts.

    python benchmarks/bench_core.py [--layer 15] [--repeats 3] [--prompts 16] [--new-tokens 48]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import alternate, header, hf_generate, median
from saesteer.data import load_records
from saesteer.generate import GenerationConfig, generate
from saesteer.hooks import base_model, capture, run_until_stopped
from saesteer.models import load_model


def bench_harvest(lm, layer: int, repeats: int) -> None:
    torch.manual_seed(0)
    ids = torch.randint(100, lm.tokenizer.vocab_size - 100, (8, 512))
    inner = base_model(lm.model)

    def stopped():
        with torch.inference_mode(), capture(inner, [layer]) as acts:
            run_until_stopped(lambda: inner(input_ids=ids, use_cache=False))
        return acts

    def full():
        with torch.inference_mode():
            return lm.model(input_ids=ids, use_cache=False).logits

    times = alternate({"harvest (stop after layer)": stopped, "full forward": full}, repeats)
    tokens = ids.numel()
    a, b = median(times["harvest (stop after layer)"]), median(times["full forward"])
    print(f"harvest layer {layer}: {tokens / a:,.0f} tok/s | full forward: {tokens / b:,.0f} tok/s | "
          f"ratio {b / a:.2f}x (median of {repeats}, 8x512 tokens)")


def bench_generation(lm, n_prompts: int, new_tokens: int, repeats: int) -> None:
    prompts = [r.text for r in load_records("bundled:harmless")[:n_prompts]]
    results: dict[str, int] = {}

    def ours(batch: int):
        def run():
            gens = generate(lm, prompts, GenerationConfig(max_new_tokens=new_tokens, batch_size=batch))
            results[f"ours b{batch}"] = sum(g.n_new_tokens for g in gens)
            return gens
        return run

    def hf_loop():
        total = 0
        for p in prompts:
            new = hf_generate(lm, p, new_tokens)
            total += len(new) - int(new[-1].item() in lm.stop_token_ids)
        results["hf generate loop"] = total

    cases = {"hf generate loop": hf_loop, "ours b1": ours(1), "ours b8": ours(8), "ours b32": ours(32)}
    times = alternate(cases, repeats, warmup=0)
    base = results["hf generate loop"] / median(times["hf generate loop"])
    print(f"{n_prompts} prompts, greedy, up to {new_tokens} new tokens, median of {repeats}:")
    for name in cases:
        tps = results[name] / median(times[name])
        print(f"  {name:18s} {tps:7.1f} tok/s  ({results[name]} tokens)  ratio vs hf loop {tps / base:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()
    header("bench_core")
    lm = load_model(args.model)
    bench_harvest(lm, args.layer, args.repeats)
    if not args.skip_generation:
        bench_generation(lm, args.prompts, args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
