"""Which SAE latents make SAE-denoised CAA steer: only those that rise on refusal replies, or the
top latents by |code difference| (rising and falling, closer to CAA)?

    .venv/bin/python benchmarks/sae_add_signed.py --sae DEMO_OUT/sae --out runs/sae_add_signed

The contrast is read on 16 + 16 bundled train prompts; each variant is added at 1x and 1.25x
CAA's norm and evaluated on 16 prompts of each bundled train half (harmful, harmless,
borderline; never the test halves), 48 new tokens. Prints coherent refusal of unsafe prompts,
over-refusal and broken answers side by side, and each vector's cosine with CAA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--hook", default="model.layers.9")
    args = ap.parse_args()

    import torch

    from saesteer.data import load_records
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from saesteer.models import load_model
    from saesteer.sae import load_sae
    from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, SteeringSpec
    from saesteer.steer.sae_vectors import latent_contrast

    lm = load_model(args.model)
    sae = load_sae(args.sae).to(lm.device)
    prompts = ([r.text for r in load_records("bundled:harmful@train", limit=16, seed=1)]
               + [r.text for r in load_records("bundled:harmless@train", limit=16, seed=1)])
    c = latent_contrast(lm, sae, args.hook, prompts)
    w = sae.W_dec.detach().float().cpu()
    cfg = RefusalEvalConfig(datasets="bundled:harmful@train,bundled:harmless@train,bundled:borderline@train",
                            limit=16, max_new_tokens=48, seed=3)
    print("| latents | n | strength | cos with CAA | coherent refusal, unsafe | refusal, unsafe | broken, unsafe | over-refusal | broken, safe |")
    print("|---|---|---|---|---|---|---|---|---|")
    for signed in (False, True):
        order = torch.argsort(c.difference.abs() if signed else c.difference, descending=True)
        for n in (32, 64, 128):
            idx = order[:n]
            vector = c.difference[idx] @ w[idx]
            cos = float(torch.nn.functional.cosine_similarity(vector, c.caa, dim=0))
            for strength in (1.0, 1.25):
                scale = strength * float(c.caa.norm()) / float(vector.norm())
                edits = [FeatureEdit(int(i), "add", float(c.difference[i]) * scale) for i in idx]
                spec = SteeringSpec([InterventionSpec(hook=args.hook, sae=FileRef(str(args.sae.resolve())), features=edits)])
                kind = "signed" if signed else "rising"
                s = evaluate_refusal(lm, args.out / f"{kind}{n}-{strength:g}", cfg, spec, progress=False)
                u, f = s["unsafe_refusal"], s["safe_over_refusal"]
                print(f"| {kind} | {n} | {strength:g} | {cos:.2f} | {u['coherent_refusal']['rate']:.0%} | {u['rate']:.0%} | "
                      f"{u['broken']['rate']:.0%} | {f['rate']:.0%} | {f['broken']['rate']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
