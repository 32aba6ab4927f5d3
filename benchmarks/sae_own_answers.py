"""Does an SAE trained on the model's own answers give a cleaner refusal latent? (issue #11, item 6)

    SAESTEER_DATA=/path/to/shared/data python benchmarks/sae_own_answers.py --out runs/sae_own

1. The model answers training prompts in its own words: the refusal-direction train splits and
   the bundled @train halves unsteered (mostly compliances), and the harmful ones again with CAA
   at --caa-strength (its own refusals; the direction is built from 48 + 48 train prompts as in
   benchmarks/attacks_caa.py). Prompts that also occur in --exclude (the held-out test sets) are
   dropped. Coherent answers become chats in OUT/own_answers.jsonl.
2. `saesteer demo` runs again with the corpus `offline+OUT/own_answers.jsonl`, once per
   --expansion, everything else at the demo's defaults (the same harvest budget, training,
   discovery and search as the demo SAE trained on `offline` alone).
3. The table compares each SAE with the demo SAE given by --baseline: reconstruction, the
   latents discovery picked, and the demo's summary.
4. How cleanly each SAE's latents separate the model's own refusals from its compliances on
   answers to prompts no SAE was trained on (--held-out-answers: responses.jsonl files of an
   evaluation, coherent rows only, the judge's verdict as the label): per latent, the AUROC of
   its maximum over the answer tokens; the best latent, how many pass 0.9, and discovery's picks.
   Held-out steering is measured after with `saesteer sweep` on the specs each run wrote
   (docs/RESULTS.md has the command).

Every stage resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAIN_SETS = "harmful_train,harmless_train,bundled:harmful@train,bundled:harmless@train,bundled:borderline@train"
HARMFUL_SETS = "harmful_train,bundled:harmful@train"
HELD_OUT = ("harmbench,strongreject,jailbreakbench:harmful,xstest:unsafe,xstest:safe,jailbreakbench:benign,"
            "bundled:harmless@test,bundled:borderline@test,bundled:harmful@test")


def own_answers(lm, out: Path, args) -> Path:
    from benchmarks.attacks_caa import caa_spec
    from saesteer.data import load_records
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from saesteer.files import atomic_path, read_jsonl

    corpus = out / "own_answers.jsonl"
    if corpus.exists():
        return corpus
    held_out = {r.text.strip().lower() for r in load_records(args.exclude)}
    runs = {"none": (TRAIN_SETS, None),
            f"caa{args.caa_strength:g}": (HARMFUL_SETS, caa_spec(lm, out, args.layer, args.caa_strength))}
    kept, dropped, broken = [], 0, 0
    for name, (datasets, spec) in runs.items():
        print(f"[own answers] {name}: {datasets}", file=sys.stderr, flush=True)
        cfg = RefusalEvalConfig(datasets=datasets, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                batch_size=16, early_stop=False, seed=0)
        evaluate_refusal(lm, out / "answers" / name, cfg, spec)
        for row in read_jsonl(out / "answers" / name / "responses.jsonl"):
            if row["prompt"].strip().lower() in held_out:
                dropped += 1
            elif not row.get("coherent", True):
                broken += 1
            else:
                kept.append({"messages": [{"role": "user", "content": row["prompt"]},
                                          {"role": "assistant", "content": row["response"]}],
                             "condition": name, "refusal": row["refusal"]})
    with atomic_path(corpus) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in kept:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    refusals = sum(r["refusal"] for r in kept)
    print(f"[own answers] kept {len(kept)} coherent answers ({refusals} refusals); dropped {dropped} held-out "
          f"prompts and {broken} broken answers", file=sys.stderr)
    return corpus


def describe(run: Path) -> dict:
    from saesteer.files import read_json

    metrics = read_json(run / "sae" / "metrics.json")
    features = read_json(run / "discover" / "features.json")
    keys = ("feature", "picked_by", "refusal_auroc", "natural_refusal_auroc", "prompt_auroc", "caa_cos",
            "causal_score", "best_value", "best_harmful_gain")
    top = [{k: f.get(k) for k in keys} for f in features.get("features", [])]
    summary = read_json(run / "summary.json") if (run / "summary.json").exists() else {}
    return {"run": str(run), "fvu": metrics.get("fvu"), "dead": metrics.get("dead_fraction"),
            "responses": features.get("responses"), "latents": top, "lines": summary.get("lines", []),
            "runs": summary.get("runs", {})}


class _Stacked:
    """Several SAEs read as one, so the model runs once for all of them."""

    def __init__(self, saes: list) -> None:
        self.saes, self.W_dec = saes, saes[0].W_dec   # pooled_codes reads W_dec only for its dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([sae.encode(x) for sae in self.saes], dim=-1)


def answer_separation(lm, sae_dirs: list[Path], rows: list[dict], picked: list[list[int]], layer: int) -> list[dict]:
    """Per SAE: how well each latent's maximum over an answer separates refusals from compliances."""
    from saesteer.discover import auroc, pooled_codes
    from saesteer.sae import load_sae

    saes = [load_sae(d).to(lm.device) for d in sae_dirs]
    conversations = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
                     for r in rows]
    maxes, _, _, _ = pooled_codes(lm, _Stacked(saes), layer, conversations, "response", batch_size=16)
    y = torch.tensor([bool(r["refusal"]) for r in rows])
    results = []
    for codes, features in zip(maxes.split([sae.W_dec.shape[0] for sae in saes], dim=1), picked):
        scores = auroc(codes[y], codes[~y])
        best = int(scores.argmax())
        results.append({"refusals": int(y.sum()), "compliances": int((~y).sum()), "best_latent": best,
                        "best_auroc": float(scores[best]), "latents_over_0.9": int((scores > 0.9).sum()),
                        "latents_over_0.8": int((scores > 0.8).sum()),
                        "picked": {str(f): float(scores[f]) for f in features}})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--limit", type=int, default=200, help="prompts per training set")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--caa-strength", type=float, default=1.5)
    ap.add_argument("--exclude", default=HELD_OUT, help="held-out sets whose prompts must not be answered")
    ap.add_argument("--expansion", type=int, action="append", help="SAE width multiple(s); default 8")
    ap.add_argument("--baseline", type=Path, default=Path("runs/demo"), help="a finished `saesteer demo` folder")
    ap.add_argument("--held-out-answers", type=Path, nargs="*", default=[
        Path("runs/sweep_demo_pub/runs/none/refusal/responses.jsonl"),
        Path("runs/sweep_demo_pub/runs/caa-L9-1.5/refusal/responses.jsonl")],
        help="responses.jsonl files of the model's answers to held-out prompts")
    args = ap.parse_args()

    from saesteer.demo import DemoConfig, run_demo
    from saesteer.files import ensure_dir, read_jsonl, write_json
    from saesteer.models import load_model

    out = ensure_dir(args.out)
    lm = load_model(args.model)
    corpus = own_answers(lm, out, args)
    results = {"baseline": describe(args.baseline)} if (args.baseline / "discover").exists() else {}
    for expansion in args.expansion or [8]:
        run = out / f"demo_x{expansion}"
        run_demo(DemoConfig(out=run, model=args.model, layer=args.layer, corpus=f"offline+{corpus.resolve()}",
                            expansion=expansion))
        results[f"own_x{expansion}"] = describe(run)
    held_out = [r for path in args.held_out_answers if path.exists() for r in read_jsonl(path) if r.get("coherent", True)]
    if held_out:
        separations = answer_separation(lm, [Path(r["run"]) / "sae" for r in results.values()], held_out,
                                        [[f["feature"] for f in r["latents"]] for r in results.values()], args.layer)
        for r, separation in zip(results.values(), separations):
            r["separation"] = separation
    write_json(out / "comparison.json", results)
    for name, r in results.items():
        print(f"\n{name}: FVU {r['fvu']:.3f}, dead {r['dead']:.1%}")
        for f in r["latents"]:
            print(f"  latent {f['feature']} ({f['picked_by']}): refusal AUROC {f['refusal_auroc']:.3f}, natural "
                  f"refusals {f['natural_refusal_auroc']:.3f}, prompts {f['prompt_auroc']:.3f}, cos CAA "
                  f"{f['caa_cos']:.2f}, causal score {f['causal_score']}")
        for line in r["lines"]:
            print(f"  {line}")
        if "separation" in r:
            print(f"  held-out answers: {json.dumps(r['separation'])}")


if __name__ == "__main__":
    main()
