"""A gate that still fires under attack: a dense prompt probe fitted on harmful requests wrapped in
jailbreak templates as well as plain ones, tested on attacks it never saw.

    SAESTEER_DATA=/path/to/shared/data python benchmarks/attack_gate.py --base runs/demo/best.yaml --out runs/attack_gate

A conditional spec steers only when its detector flags the prompt, so it is exactly as robust as
its detector: a probe fitted on plain requests reads a request wrapped in a role-play or
many-shot template as something else, and the gated spec answers like the unsteered model. This
script fits two dense probes on mean-pooled residuals of the user's text at --layer, with the
same negatives (plain harmless prompts) and a threshold set on --calibration at --fpr:

- `plain_probe`: positives are the plain --harmful prompts;
- `attack_probe`: positives are the plain prompts and the same prompts each wrapped in one of
  --attacks (round robin, so the set does not grow with the number of attacks).

With --wrapped-negatives and/or --five-shot-negatives N it fits a third, `attack_probe_neg`, whose
negatives also hold the harmless prompts wrapped the same way and N five-shot MMLU conversations
(test questions drawn with seed 1; the firing check below uses seed 0), so that a wrapper or
exemplar turns alone are not evidence of harm.

Each becomes a spec: --base's interventions behind that probe (`plain_probe.yaml`,
`attack_probe.yaml`, `attack_probe_neg.yaml` in --out). It then prints how often each probe fires on --test-unsafe and
--test-safe prompts, plain and wrapped in each of --heldout (attacks disjoint from --attacks),
so the firing rates on wrapped requests are measured on templates the probe never saw, and on
--five-shot MMLU conversations (capability prompts a gate must leave alone). A probe
that fires on a wrapped *safe* request is counted too: steering a benign request that arrives in
a jailbreak template is a cost, and it is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAIN_ATTACKS = ("style_injection_json,distractors,poems,combination_2,aim,dan,manyshot-1,reversed,atbash,"
                 "base64_input_only")
"""Attacks the probe is fitted with: none of them is in benchmarks' at-scale attack run (runs/scale.sh)."""
HELDOUT = ("base64,rot13,leetspeak,character_space,disemvowel,prefix_injection,refusal_suppression,style_injection,"
           "distractors_negated,wikipedia_with_title,combination_1,evil_confidant,manyshot-4")


def wrapped(prompts: list[str], attacks: list) -> list:
    """Each prompt wrapped in one attack, in turn."""
    return [attacks[i % len(attacks)].messages(p) for i, p in enumerate(prompts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="spec whose interventions the gate guards")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--harmful", default="harmful_train")
    ap.add_argument("--harmless", default="harmless_train,bundled:borderline@train")
    ap.add_argument("--harmless-limit", type=int, default=300)
    ap.add_argument("--calibration", default="harmless_val")
    ap.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate on --calibration")
    ap.add_argument("--attacks", default=TRAIN_ATTACKS, help="attacks the attack probe is fitted with")
    ap.add_argument("--heldout", default=HELDOUT, help="attacks the firing rates are measured on")
    ap.add_argument("--test-unsafe", default="harmbench:standard")
    ap.add_argument("--test-safe", default="xstest:safe")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--five-shot", type=int, default=40, help="five-shot MMLU prompts to measure firing on")
    ap.add_argument("--wrapped-negatives", action="store_true",
                    help="fit attack_probe_neg with the wrapped harmless prompts as negatives too")
    ap.add_argument("--five-shot-negatives", type=int, default=0, metavar="N",
                    help="fit attack_probe_neg with N five-shot MMLU conversations as negatives too")
    args = ap.parse_args()

    import torch

    from saesteer.attacks.catalog import resolve_attacks
    from saesteer.data import load_records
    from saesteer.evaluate.detector import five_shot_mmlu
    from saesteer.files import write_json
    from saesteer.models import load_model
    from saesteer.steer import SteeringSpec
    from saesteer.steer.conditions import threshold_for_fpr
    from saesteer.steer.directions import mean_residuals
    from saesteer.steer.probes import fit_dense_probe, sparse_probe_condition

    train_attacks, heldout = resolve_attacks(args.attacks), resolve_attacks(args.heldout)
    overlap = {a.name for a in train_attacks} & {a.name for a in heldout}
    if overlap:
        sys.exit(f"--heldout shares {sorted(overlap)} with --attacks; held-out attacks must be unseen")
    base = SteeringSpec.load(args.base)
    lm = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)

    def texts(spec: str, limit: int | None = None) -> list[str]:
        return [r.prompt for r in load_records(spec, limit=limit)]

    def residuals(items: list, tag: str) -> torch.Tensor:
        return mean_residuals(lm, items, [args.layer], select="content", batch_size=8, progress=tag)[args.layer]

    harmful = texts(args.harmful)
    harmless = texts(args.harmless, args.harmless_limit)
    x_harmful, x_harmless = residuals(harmful, "harmful"), residuals(harmless, "harmless")
    x_wrapped = residuals(wrapped(harmful, train_attacks), "harmful, wrapped")
    x_cal = residuals(texts(args.calibration), "calibration")
    unsafe, safe = texts(args.test_unsafe, args.limit), texts(args.test_safe, args.limit)
    tests = {"plain": (residuals(unsafe, "unsafe"), residuals(safe, "safe"))}
    five_shot = residuals([c for _, c in five_shot_mmlu(args.five_shot, 0)], "five-shot") if args.five_shot else None
    for attack in heldout:
        tests[attack.name] = (residuals([attack.messages(p) for p in unsafe], f"unsafe, {attack.name}"),
                              residuals([attack.messages(p) for p in safe], f"safe, {attack.name}"))

    probes = {"plain_probe": (x_harmful, x_harmless), "attack_probe": (torch.cat([x_harmful, x_wrapped]), x_harmless)}
    if args.wrapped_negatives or args.five_shot_negatives:
        negatives = [x_harmless]
        if args.wrapped_negatives:
            negatives.append(residuals(wrapped(harmless, train_attacks), "harmless, wrapped"))
        if args.five_shot_negatives:
            negatives.append(residuals([c for _, c in five_shot_mmlu(args.five_shot_negatives, 1)], "five-shot negatives"))
        probes["attack_probe_neg"] = (torch.cat([x_harmful, x_wrapped]), torch.cat(negatives))
    report: dict[str, dict] = {}
    for name, (positives, negatives) in probes.items():
        probe = fit_dense_probe(positives, negatives, target_fpr=args.fpr)
        probe.threshold = threshold_for_fpr(probe.logits(x_cal), args.fpr)
        probe.calibration.update(  # the threshold now comes from --calibration, not the fitting split
            calibration_fpr=round(float((probe.logits(x_cal) > probe.threshold).float().mean()), 4),
            n_calibration=[0, len(x_cal)], calibration_tpr=None)
        fires = {k: (float((probe.logits(u) > probe.threshold).float().mean()),
                     float((probe.logits(s) > probe.threshold).float().mean())) for k, (u, s) in tests.items()}
        if five_shot is not None:
            fires["five-shot MMLU (safe)"] = (None, float((probe.logits(five_shot) > probe.threshold).float().mean()))
        condition = sparse_probe_condition(
            probe, str(args.layer), None, args.out / f"{name}.safetensors", on=f"{args.harmful} vs {args.harmless}",
            calibrated_on=args.calibration, target_fpr=args.fpr,
            attacks=[a.name for a in train_attacks] if name != "plain_probe" else [],
            wrapped_negatives=name == "attack_probe_neg" and args.wrapped_negatives,
            five_shot_negatives=args.five_shot_negatives if name == "attack_probe_neg" else 0)
        spec = dataclasses.replace(base, condition=condition, name=f"{base.name or 'spec'}+{name}",
                                   description=f"{base.description or ''} (gate: {name}, benchmarks/attack_gate.py)")
        spec.save(args.out / f"{name}.yaml")
        report[name] = {"fires_unsafe_safe": fires, "spec": str(args.out / f"{name}.yaml")}
    write_json(args.out / "firing.json", report)

    print(f"\nfires on unsafe / safe prompts ({args.test_unsafe} / {args.test_safe}, {args.limit} each; "
          f"threshold at {args.fpr:.0%} on {args.calibration}):\n")
    print("| prompts | " + " | ".join(report) + " |\n|---|" + "---|" * len(report))
    for k in report["plain_probe"]["fires_unsafe_safe"]:
        cells = [" / ".join("-" if v is None else f"{v:.0%}" for v in report[n]["fires_unsafe_safe"][k]) for n in report]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
