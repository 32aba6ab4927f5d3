"""Does steering hold under attack? Single-turn attack success on a model, unsteered vs CAA.

    SAESTEER_DATA=/path/to/shared/data OMP_NUM_THREADS=1 python benchmarks/attacks_caa.py \\
        --out runs/attacks --limit 10 --max-new-tokens 40

Builds the CAA refusal direction at --layer from 48 harmful_train + 48 harmless_train prompts (the
refusal-direction *train* splits, disjoint from the attacked prompts; as
benchmarks/judge_label_set.py does), writes it as a steering spec (added with --value at all
positions), and runs `saesteer eval attacks` through the API for each condition: unsteered, CAA,
and any --spec NAME=FILE. The prefilling attacks (and the plain request) also run with steering
on the prompt only and on the generated tokens only, for every steered condition. Each
condition's folder holds responses.jsonl, summary.json and run.json (the spec and its hash); the
table printed at the end puts the attack success rates side by side. Every run resumes, so one
comparison can be split over processes sharing --out (`--only none,X` and `--only caa1.5,Y`, one
torch thread each), then printed by a last run without --only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def caa_spec(lm, out: Path, layer: int, value: float):
    from saesteer.data import load_records
    from saesteer.steer import FileRef, InterventionSpec, SteeringSpec
    from saesteer.steer.directions import caa_direction, save_vectors

    vectors = out / f"caa_l{layer}.safetensors"
    if not vectors.exists():
        harmful = [r.text for r in load_records("harmful_train", limit=48, seed=0)]
        harmless = [r.text for r in load_records("harmless_train", limit=48, seed=0)]
        v = caa_direction(lm, harmful + harmless, [layer], progress="CAA direction")[layer]
        save_vectors(vectors, {"caa": v}, {"layer": str(layer)})
    spec = SteeringSpec(interventions=[InterventionSpec(hook=str(layer), vector=FileRef(str(vectors.resolve()),
                        key="caa"), op="add", value=value)], name=f"caa-L{layer}-{value:g}")
    spec.save(out / f"caa_l{layer}_{value:g}.yaml")
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="harmbench")
    ap.add_argument("--benign", default="xstest:safe", help="safe prompts for over-refusal ('' for none)")
    ap.add_argument("--attacks", default="all")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--value", type=float, default=1.5)
    ap.add_argument("--no-caa", action="store_true", help="only the unsteered model and the --spec conditions")
    ap.add_argument("--spec", action="append", default=[], help="NAME=FILE: another steering spec")
    ap.add_argument("--positions-for", default=None,
                    help="comma-separated conditions whose prefilling also runs steered on prompt / generated tokens "
                         "only (default: every steered condition; '' for none)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--plot", type=Path, help="PNG: attack success per family for every condition, with 95%% intervals")
    ap.add_argument("--only", default=None,
                    help="comma-separated conditions to run now (split one comparison over processes sharing --out; "
                         "a last run without --only resumes them all and prints the table)")
    args = ap.parse_args()

    from saesteer.attacks.single_turn import AttackEvalConfig, evaluate_attacks
    from saesteer.files import ensure_dir
    from saesteer.models import load_model

    caa_name = None if args.no_caa else f"caa{args.value:g}"
    conditions = {"none": None, **({caa_name: None} if caa_name else {}),
                  **dict(item.split("=", 1) for item in args.spec)}
    if args.only is not None:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(conditions))
        if unknown:
            ap.error(f"--only names no condition: {', '.join(unknown)} (known: {', '.join(conditions)})")
        conditions = {k: v for k, v in conditions.items() if k in wanted}
    out = ensure_dir(args.out)
    lm = load_model(args.model)
    if caa_name in conditions:
        conditions[caa_name] = caa_spec(lm, out, args.layer, args.value)
    summaries = {}
    for name, spec in conditions.items():
        print(f"[attacks] {name}", file=sys.stderr, flush=True)
        cfg = AttackEvalConfig(datasets=args.dataset, attacks=args.attacks, limit=args.limit,
                               benign=args.benign or None, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size)
        summaries[name] = evaluate_attacks(lm, out / name, cfg, spec)
        by_position = args.positions_for is None or name in args.positions_for.split(",")
        if spec is not None and by_position:
            # `all` is the main run's; the prompt-only and generated-only positions run here
            cfg.attacks, cfg.positions, cfg.benign = "prefill,prefill_steps", "prompt,generated", None
            summaries[f"{name} prefill"] = evaluate_attacks(lm, out / f"{name}_prefill_positions", cfg, spec)
    if args.only is not None:
        return
    print_table(summaries)
    if args.plot:
        plot_families(summaries, args.plot)


def plot_families(summaries: dict, path: Path) -> None:
    """One panel per condition: plain-request refusal, over-refusal, and attack success per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saesteer.files import atomic_path

    runs = {k: v for k, v in summaries.items() if not k.endswith(" prefill")}
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (name, s) in zip(axes[0], runs.items()):
        bars = [("refusal\n(plain)", s["plain"]["refusal"], "tab:green")]
        if "over_refusal" in s:
            bars.append(("over-refusal\n(safe)", s["over_refusal"], "tab:red"))
        bars += [(fam, f["asr"], "tab:blue") for fam, f in s["families"].items()]
        bars.append(("all attacks", s["overall"]["asr"], "tab:purple"))
        xs = range(len(bars))
        rates = [b[1]["rate"] for b in bars]
        err = [[r - b[1]["ci95"][0] for r, b in zip(rates, bars)], [b[1]["ci95"][1] - r for r, b in zip(rates, bars)]]
        ax.bar(xs, rates, yerr=err, color=[b[2] for b in bars], capsize=2)
        ax.set_xticks(list(xs), [b[0] for b in bars], rotation=60, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of prompts (attack success in blue)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _cell(s: dict) -> str:
    return f"{s['k']}/{s['n']} ({s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}])" if s["n"] else "-"


def print_table(summaries: dict) -> None:
    main_runs = {k: v for k, v in summaries.items() if not k.endswith(" prefill")}
    names = list(main_runs)
    print("| attack | family | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    first = next(iter(main_runs.values()))
    print("| plain request: refusal | | " + " | ".join(_cell(s["plain"]["refusal"]) for s in main_runs.values()) + " |")
    if "over_refusal" in first:
        print("| safe prompts: over-refusal | | " + " | ".join(_cell(s["over_refusal"]) for s in main_runs.values())
              + " |")
    print("| plain request: success | | " + " | ".join(_cell(s["plain"]["asr"]) for s in main_runs.values()) + " |")
    for attack, a in first["attacks"].items():
        print(f"| {attack} | {a['family']} | " + " | ".join(_cell(s["attacks"][attack]["asr"])
                                                        for s in main_runs.values()) + " |")
    for family in first["families"]:
        print(f"| **{family}** (pooled) | | " + " | ".join(_cell(s["families"][family]["asr"])
                                                         for s in main_runs.values()) + " |")
    print("| **all attacks** (pooled) | | " + " | ".join(_cell(s["overall"]["asr"]) for s in main_runs.values()) + " |")
    print("| any attack (per prompt) | | " + " | ".join(_cell(s["overall"]["any_attack"])
                                                      for s in main_runs.values()) + " |")
    for name, s in summaries.items():
        if name.endswith(" prefill"):
            print(f"\n{name} by steering position:")
            base = summaries[name.removesuffix(" prefill")]
            groups = {"all": {"plain": base["plain"], "attacks": {a: base["attacks"][a] for a in
                                                                  ("prefill", "prefill_steps") if a in base["attacks"]}},
                      **s["by_positions"]}
            for pos, g in groups.items():
                cells = ", ".join(f"{a} {_cell(v['asr'])}" for a, v in g["attacks"].items())
                print(f"  {pos}: plain {_cell(g['plain']['asr'])}; {cells}")


if __name__ == "__main__":
    main()
