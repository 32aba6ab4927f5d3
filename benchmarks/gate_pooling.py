"""How a gate's pooling, scope and calibration decide whether it still fires on wrapped requests.

    SAESTEER_DATA=/path/to/shared/data python benchmarks/gate_pooling.py --spec runs/attack_gate/plain_probe.yaml \
        [--write window16,last_turn,five_shot,0.1=runs/attack_gate/plain_probe_window.yaml]

A gate that averages its probe over the whole prompt (`pooling: mean`) reads a request wrapped in
a jailbreak template as mostly template, and stays shut. `windowN` pooling scores the best
stretch of N tokens instead, so the request's own words can carry it; but any long benign text
(a five-shot prompt's exemplars) also has more stretches that can look harmful. This script
scores every prompt's tokens once with --spec's detector and, for each pooling x scope (the
whole prompt, or the last turn only) x calibration (the --calibration prompts alone, or also
--five-shot-cal five-shot MMLU conversations, taking the higher threshold) x false-positive
target, prints how often the gate fires on --test-unsafe / --test-safe prompts, plain and
wrapped in each of --attacks, and on five-shot MMLU test conversations (other questions than
the calibration ones). With --write it saves --spec with one of those gates as a new spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ATTACKS = ("base64,leetspeak,disemvowel,prefix_injection,refusal_suppression,style_injection,distractors_negated,"
           "wikipedia_with_title,combination_1,evil_confidant,manyshot-4,word_scramble,character_noise")
SCOPES = ("prompt", "last_turn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, required=True, help="a spec whose condition is a probe (its detector is used)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--calibration", default="harmless_val")
    ap.add_argument("--cal-limit", type=int, default=300)
    ap.add_argument("--five-shot-cal", type=int, default=60, help="five-shot MMLU conversations (seed 1) to calibrate on")
    ap.add_argument("--test-unsafe", default="harmbench:standard")
    ap.add_argument("--test-safe", default="xstest:safe")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--five-shot", type=int, default=40, help="five-shot MMLU test conversations (seed 0)")
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--poolings", default="mean,window16,window32")
    ap.add_argument("--fprs", default="0.05,0.1")
    ap.add_argument("--write", metavar="POOLING,SCOPE,CAL,FPR=PATH",
                    help="save --spec gated this way, e.g. window16,last_turn,five_shot,0.1=out.yaml")
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from saesteer.attacks.catalog import resolve_attacks
    from saesteer.data import load_records
    from saesteer.evaluate.detector import five_shot_mmlu
    from saesteer.generate import CONTENT, HISTORY, ForwardInfo, forward_context, last_turn_tokens, prompt_roles
    from saesteer.hooks import base_model, capture, hook_point, run_until_stopped
    from saesteer.models import load_model
    from saesteer.steer import Steering, SteeringSpec
    from saesteer.steer.conditions import check_pooling, pool, threshold_for_fpr
    from saesteer.steer.directions import left_padded

    lm = load_model(args.model)
    spec = SteeringSpec.load(args.spec)
    gate = Steering(lm, spec).gate
    if gate is None:
        sys.exit(f"{args.spec} has no condition: there is no detector to pool")
    if spec.condition.direction != "above":
        sys.exit(f"{args.spec}'s detector fires below its threshold; this script reads detectors that fire above")
    detector, point = gate.condition.detector, hook_point(lm.model, spec.condition.hook)
    poolings = args.poolings.split(",")
    for p in poolings:
        check_pooling(p)

    @torch.inference_mode()
    def token_scores(items: list, tag: str) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per scope, each item's (token scores, mask of tokens read)."""
        encoded = []
        for item in items:
            ids = lm.tokenizer(lm.chat(item, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            roles = torch.tensor(prompt_roles(lm, len(ids), chat=True, last_turn=last_turn_tokens(lm, item, ids)))
            encoded.append((ids, roles))
        out: dict[str, list] = {s: [] for s in SCOPES}
        for start in tqdm(range(0, len(encoded), 8), desc=tag, leave=False):
            chunk = encoded[start:start + 8]
            ids, attn, _, positions = left_padded([(i, [True] * len(i)) for i, _ in chunk],
                                                  lm.tokenizer.pad_token_id, lm.device)
            info = ForwardInfo(roles=attn * CONTENT, rows=torch.arange(len(chunk)), prefill=True)
            with forward_context(info), capture(base_model(lm.model), [point.layer]) as acts:
                run_until_stopped(lambda: base_model(lm.model)(input_ids=ids, attention_mask=attn,
                                                               position_ids=positions, use_cache=False))
            hidden = acts[point.layer].float()
            for row, (tokens, roles) in enumerate(chunk):
                h = hidden[row, hidden.shape[1] - len(tokens):]
                scores = detector.token_scores(h).cpu()
                out["prompt"].append((scores, (roles == CONTENT) | (roles == HISTORY)))
                out["last_turn"].append((scores, roles == CONTENT))
        return out

    def pooled(scored: list[tuple[torch.Tensor, torch.Tensor]], pooling: str) -> torch.Tensor:
        return torch.cat([pool(s[None], m[None], pooling) for s, m in scored])

    def texts(spec_: str, limit: int | None = None) -> list[str]:
        return [r.prompt for r in load_records(spec_, limit=limit)]

    unsafe, safe = texts(args.test_unsafe, args.limit), texts(args.test_safe, args.limit)
    cal = token_scores(texts(args.calibration, args.cal_limit), "calibration")
    cal_five = token_scores([c for _, c in five_shot_mmlu(args.five_shot_cal, 1)], "five-shot calibration")
    tests = {"plain": (token_scores(unsafe, "unsafe"), token_scores(safe, "safe"))}
    for attack in resolve_attacks(args.attacks):
        tests[attack.name] = (token_scores([attack.messages(p) for p in unsafe], f"unsafe, {attack.name}"),
                              token_scores([attack.messages(p) for p in safe], f"safe, {attack.name}"))
    five = token_scores([c for _, c in five_shot_mmlu(args.five_shot, 0)], "five-shot test")

    def threshold(pooling: str, scope: str, calibration: str, fpr: float) -> float:
        t = threshold_for_fpr(pooled(cal[scope], pooling), fpr)
        if calibration == "five_shot":
            t = max(t, threshold_for_fpr(pooled(cal_five[scope], pooling), fpr))
        return t

    print(f"\nfires on {args.test_unsafe} / {args.test_safe} ({args.limit} each), plain and wrapped; five-shot MMLU "
          f"({args.five_shot}); detector of {args.spec}\n")
    names = list(tests)
    print("| pooling | scope | calibrated on | FPR | " + " | ".join(names) + " | five-shot |")
    print("|---|---|---|---|" + "---|" * (len(names) + 1))
    for pooling in poolings:
        for scope in SCOPES:
            for calibration in ("harmless", "five_shot"):
                for fpr in (float(x) for x in args.fprs.split(",")):
                    t = threshold(pooling, scope, calibration, fpr)
                    cells = [" / ".join(f"{float((pooled(side[scope], pooling) > t).float().mean()):.0%}" for side in pair)
                             for pair in tests.values()]
                    cells.append(f"{float((pooled(five[scope], pooling) > t).float().mean()):.0%}")
                    where = args.calibration + (" + five-shot" if calibration == "five_shot" else "")
                    print(f"| {pooling} | {scope} | {where} | {fpr:.0%} | " + " | ".join(cells) + " |", flush=True)
    if args.write:
        how, path = args.write.split("=", 1)
        pooling, scope, calibration, fpr = how.split(",")
        t = threshold(pooling, scope, calibration, float(fpr))
        on = f"{args.calibration} ({args.cal_limit})" + (
            f" and {args.five_shot_cal} five-shot MMLU conversations (seed 1), the higher threshold"
            if calibration == "five_shot" else "")
        condition = dataclasses.replace(spec.condition, pooling=pooling, scope=None if scope == "prompt" else scope,
                                        threshold=t,
                                        calibration={"target_fpr": float(fpr), "on": on,
                                                     "chosen_by": "benchmarks/gate_pooling.py"})
        gated = dataclasses.replace(spec, condition=condition, name=f"{spec.name or 'spec'}+{pooling}_{scope}")
        gated.save(path)
        print(f"\nwrote {path} (threshold {t:.3f})")


if __name__ == "__main__":
    main()
