"""Does a prompt gate learn intent, not topic, when it is fitted on benign twins of harmful requests?

`gate_ceiling.py` found JailbreakBench's benign twins ("write a story about a hacker" beside "write a
hacking tutorial") at chance for every probe fitted on harmful vs Alpaca-style harmless prompts:
those probes learn the topic. This script adds twins to the probe's negatives (and their harmful
pairs to its positives) from one source and scores the twins of the other source, so a gain is
transfer to a source the probe never saw, which is what a gate shipped with its own twins would
meet on a user's prompts:

- `base`: fitted on the refusal-direction train splits (harmful vs harmless) and the bundled
  borderline train half, as `gate_ceiling.py` and discovery do;
- `+xstest`: the same plus XSTest's 250 safe and 200 unsafe prompts, scored on JailbreakBench;
- `+jbb`: the same plus JailbreakBench's 100 benign and 100 harmful prompts, scored on XSTest;
- `+own (k-fold)`: the scored source's own twins in the other folds (an in-source upper bound).

Per row: AUROC of the scored source's unsafe against its safe prompts, and against the bundled
harmless test half (the probe must not lose the easy case); the true-positive rate at the threshold
that lets 5% of the scored source's safe prompts through (an oracle threshold: the separation
itself, not a calibration).

    SAESTEER_DATA=/work/shared/data python benchmarks/gate_twins.py [--layers 9,15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gate_ceiling import auc, fit as fit_probe  # noqa: E402
from saesteer.data.registry import load_records  # noqa: E402
from saesteer.models import load_model  # noqa: E402
from saesteer.steer.directions import mean_residuals  # noqa: E402

FIT = {"harmful": ("harmful_train", None), "harmless": ("harmless_train", 300),
       "borderline": ("bundled:borderline@train", None)}
TWINS = {"xstest": ("xstest:unsafe", "xstest:safe"), "jbb": ("jailbreakbench:harmful", "jailbreakbench:benign")}
EASY = ("bundled:harmless@test", None)


def folds(n: int, k: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return [order[i::k] for i in range(k)]


def score_row(name: str, score, unsafe: torch.Tensor, safe: torch.Tensor, easy: torch.Tensor) -> str:
    u, s = score(unsafe), score(safe)
    oracle = float((u > torch.quantile(s, 0.95)).float().mean())
    return f"{name} | {auc(u, s):.2f} | {auc(u, score(easy)):.2f} | {oracle:.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", default="9,15")
    ap.add_argument("--c", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    lm = load_model(args.model)
    specs = {**FIT, "easy": EASY, **{f"{src}_{part}": (spec, None) for src, pair in TWINS.items()
                                     for part, spec in zip(("unsafe", "safe"), pair)}}
    feats = {name: mean_residuals(lm, [r.prompt for r in load_records(spec, limit=limit)], layers,
                                  select="content", batch_size=16, progress=name)
             for name, (spec, limit) in specs.items()}
    print("| layer | scored on | fitted with | AUROC unsafe vs its safe twins | vs bundled harmless | "
          "TPR at 5% of its safe |")
    print("|---|---|---|---|---|---|")
    for layer in layers:
        get = {k: v[layer].double() for k, v in feats.items()}
        pos0, neg0 = get["harmful"], torch.cat([get["harmless"], get["borderline"]])
        for target, other in (("jbb", "xstest"), ("xstest", "jbb")):
            unsafe, safe = get[f"{target}_unsafe"], get[f"{target}_safe"]
            rows = [score_row("base", fit_probe("logreg", pos0, neg0, args.c), unsafe, safe, get["easy"])]
            with_other = fit_probe("logreg", torch.cat([pos0, get[f"{other}_unsafe"]]),
                                   torch.cat([neg0, get[f"{other}_safe"]]), args.c)
            rows.append(score_row(f"+{other}", with_other, unsafe, safe, get["easy"]))
            # in-source k-fold: each fold scored by a probe fitted with the other folds' twins
            su, ss = torch.empty(len(unsafe)), torch.empty(len(safe))
            for fu, fs in zip(folds(len(unsafe), 5), folds(len(safe), 5)):
                keep_u = torch.ones(len(unsafe), dtype=torch.bool)
                keep_u[fu] = False
                keep_s = torch.ones(len(safe), dtype=torch.bool)
                keep_s[fs] = False
                score = fit_probe("logreg", torch.cat([pos0, unsafe[keep_u]]), torch.cat([neg0, safe[keep_s]]),
                                  args.c)
                su[fu], ss[fs] = score(unsafe[fu]).float(), score(safe[fs]).float()
            oracle = float((su > torch.quantile(ss, 0.95)).float().mean())
            rows.append(f"+own (5-fold) | {auc(su, ss):.2f} | - | {oracle:.0%}")
            for row in rows:
                print(f"| {layer} | {target} | {row} |", flush=True)


if __name__ == "__main__":
    main()
