"""Steered ÷ unsteered greedy generation throughput, same prompts, batch 1 and 8, one run.

The steered model clamps one latent of a 576 → 4,608, k = 32 Top-k SAE on every token (the
paper's intervention), which needs the full encoder on every token: about 2% of SmolLM2's
FLOPs per token. Pass --sae to time a trained SAE; otherwise a freshly initialised one of the
same shape is used (the cost does not depend on the weights).

    python benchmarks/bench_steer.py [--sae DIR] [--repeats 3] [--prompts 8] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import alternate, header, median
from saesteer.data import load_records
from saesteer.generate import GenerationConfig, generate
from saesteer.models import load_model
from saesteer.steer import FeatureEdit, Steering, sae_clamp_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sae", type=Path)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--feature", type=int, default=0)
    ap.add_argument("--value", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args()
    header("bench_steer")
    lm = load_model(args.model)
    sae_dir = args.sae
    if sae_dir is None:
        from saesteer.sae import TopKSAE, save_sae

        sae = TopKSAE.init(lm.d_model, 8 * lm.d_model, 32, seed=0)
        sae.metadata.update({"model_id": lm.model_id, "layer": args.layer, "hf_hook_name": f"model.layers.{args.layer}"})
        sae_dir = Path(tempfile.mkdtemp()) / "sae"
        save_sae(sae, sae_dir)
    from saesteer.sae import load_sae

    hook = load_sae(sae_dir).metadata.get("hf_hook_name") or f"model.layers.{args.layer}"
    steering = Steering(lm, sae_clamp_spec(sae_dir, hook, [FeatureEdit(args.feature, "clamp", args.value)]),
                        check_model=False)
    prompts = [r.text for r in load_records("bundled:harmless")[:args.prompts]]
    for batch in (1, 8):
        # Forced length, so both sides generate exactly the same number of tokens.
        config = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=batch, ignore_eos=True)

        def plain():
            return _run(lm, prompts, config)

        def steered():
            with steering.active():
                return _run(lm, prompts, config)

        times = alternate({"unsteered": plain, "steered": steered}, args.repeats)
        tokens = len(prompts) * args.new_tokens
        a, b = median(times["unsteered"]), median(times["steered"])
        print(f"batch {batch}: unsteered {tokens / a:6.1f} tok/s | steered {tokens / b:6.1f} tok/s | "
              f"steered/unsteered {a / b:.3f} (median of {args.repeats}, {len(prompts)} prompts x {args.new_tokens} tokens)")


def _run(lm, prompts, config):
    return generate(lm, prompts, config)


if __name__ == "__main__":
    main()
