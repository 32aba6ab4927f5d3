"""Generate smollm2 answers to label by hand: unsteered and steered, safe and unsafe prompts.

    SAESTEER_DATA=/path/to/shared/data python benchmarks/judge_label_set.py --out runs/labelset

Each condition (unsteered, CAA at 1x / 1.5x / 2x at layer 9, and any extra spec given with
--spec NAME=FILE) answers the same seeded mix of HarmBench, AdvBench, StrongREJECT,
JailbreakBench (harmful and benign), XSTest (safe and unsafe) and Alpaca prompts, greedily and
without early stopping, so every answer is whole. The rows go to OUT/answers.jsonl with the
phrase judge's verdict beside them; people then label each row (refusal, partial, coherent,
refusal family) into benchmarks/labels/. The CAA direction is built from the refusal-direction
*train* splits, disjoint from every prompt answered here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASETS = "harmbench,advbench,strongreject,jailbreakbench,xstest,alpaca"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--limit", type=int, default=14, help="prompts per dataset")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--strengths", default="1,1.5,2")
    ap.add_argument("--spec", action="append", default=[], help="NAME=FILE: another steering spec to answer with")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--system", help="system prompt for every condition (e.g. a guardrail prompt)")
    ap.add_argument("--name", default="none", help="name of the unsteered condition")
    args = ap.parse_args()

    from saesteer.data import load_records
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from saesteer.files import read_jsonl
    from saesteer.models import load_model
    from saesteer.steer import FileRef, InterventionSpec, SteeringSpec
    from saesteer.steer.directions import caa_direction, save_vectors

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    strengths = [float(x) for x in args.strengths.split(",") if x]
    vectors = out / "caa.safetensors"
    if strengths and not vectors.exists():
        harmful = [r.text for r in load_records("harmful_train", limit=48, seed=0)]
        harmless = [r.text for r in load_records("harmless_train", limit=48, seed=0)]
        v = caa_direction(lm, harmful + harmless, [args.layer], progress="CAA direction")[args.layer]
        save_vectors(vectors, {"caa": v}, {"layer": str(args.layer)})
    conditions: dict[str, SteeringSpec | str | None] = {args.name: None}
    for s in strengths:
        conditions[f"caa{s:g}"] = SteeringSpec(interventions=[InterventionSpec(
            hook=str(args.layer), vector=FileRef(str(vectors.resolve()), key="caa"), op="add", value=s)],
            name=f"caa-L{args.layer}-{s:g}")
    for item in args.spec:
        name, _, path = item.partition("=")
        conditions[name] = path
    cfg = RefusalEvalConfig(datasets=args.datasets, limit=args.limit, max_new_tokens=args.max_new_tokens,
                            batch_size=16, early_stop=False, seed=args.seed,
                            system=args.system)
    rows = []
    for name, spec in conditions.items():
        print(f"[labelset] {name}", flush=True)
        evaluate_refusal(lm, out / name, cfg, spec)
        for row in read_jsonl(out / name / "responses.jsonl"):
            rows.append({"uid": f"{name}:{row['id']}", "condition": name, "id": row["id"],
                         "dataset": row["dataset"], "label": row["label"], "prompt": row["prompt"],
                         "response": row["response"], "phrase_refusal": row["refusal"]})
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} answers in {out / 'answers.jsonl'}")


if __name__ == "__main__":
    main()
