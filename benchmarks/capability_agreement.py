"""Our capability tasks against lm-evaluation-harness on the same items and the same model.

The harness runs offline on local files: the sampled items are written as JSON lines, each
task is a YAML that includes the harness's own task file (`mmlu` default template, one task
per subject; `truthfulqa_mc1/mc2`; `gsm8k_cot`) with `dataset_path: json`, and the model is
the in-memory `HFLM(pretrained=lm.model, tokenizer=lm.tokenizer)`. With `--steer`, both run
under the same steering hooks (plain specs only: the harness's forwards carry no token roles,
so a conditional spec would be re-decided at every decoding step there).

    SAESTEER_DATA=/work/shared/data python -m benchmarks.capability_agreement \\
        [--model smollm2] [--mmlu 200] [--truthfulqa 60] [--gsm8k 30] [--out runs/agreement]

Prints, per task: both scores, the difference in points, whether the harness's prompts equal
ours, and how often the two agree item by item. Needs `pip install lm-eval`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from saesteer.data import Record  # noqa: E402
from saesteer.evaluate import capability_tasks as fmt  # noqa: E402
from saesteer.evaluate.capability import CapabilityConfig, TaskData, evaluate_capability, task_items  # noqa: E402
from saesteer.files import ensure_dir, read_jsonl, write_json  # noqa: E402
from saesteer.models import load_model  # noqa: E402


def lm_eval_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _mmlu_doc(r: Record) -> dict:
    return {"id": r.id, "question": r.prompt, "subject": r.category, "choices": r.choices, "answer": r.correct[0]}


def write_harness_tasks(root: Path, items: dict[str, list]) -> dict[str, list[str]]:
    """Local-file task YAMLs for the sampled items; returns harness task names per our task."""
    tasks = lm_eval_dir()
    names: dict[str, list[str]] = {}
    if "mmlu_ll" in items:
        by_subject: dict[str, list] = defaultdict(list)
        for it in items["mmlu_ll"]:
            by_subject[it.record.category].append(it)
        names["mmlu_ll"] = []
        for subject, its in sorted(by_subject.items()):
            _jsonl(root / f"mmlu_{subject}_test.jsonl", [_mmlu_doc(it.record) for it in its])
            _jsonl(root / f"mmlu_{subject}_dev.jsonl", [_mmlu_doc(r) for r in its[0].shots])
            name = f"sst_mmlu_{subject}"
            description = json.dumps(f"The following are multiple choice questions (with answers) about "
                                      f"{fmt.subject_name(subject)}.\n\n")
            (root / f"{name}.yaml").write_text(
                f"include: {tasks / 'mmlu/default/_default_template_yaml'}\ntask: {name}\n"
                f"dataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    test: {root / f'mmlu_{subject}_test.jsonl'}\n"
                f"    dev: {root / f'mmlu_{subject}_dev.jsonl'}\n"
                f"description: {description}\nnum_fewshot: {len(its[0].shots)}\n")
            names["mmlu_ll"].append(name)
    for task, source in (("truthfulqa_mc1", "truthfulqa_mc1.yaml"), ("truthfulqa_mc2", "truthfulqa_mc2.yaml")):
        if task in items:
            docs = []
            for it in items[task]:
                r = it.record
                docs.append({"id": r.id, "question": r.prompt,
                             "mc1_targets": {"choices": r.choices,
                                             "labels": [int(i in r.correct) for i in range(len(r.choices))]},
                             "mc2_targets": {"choices": r.meta["mc2_choices"],
                                             "labels": [int(i in r.meta["mc2_correct"])
                                                        for i in range(len(r.meta["mc2_choices"]))]}})
            _jsonl(root / f"{task}.jsonl", docs)
            (root / f"sst_{task}.yaml").write_text(
                f"include: {tasks / 'truthfulqa' / source}\ntask: sst_{task}\ntag: []\n"
                f"dataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {root / f'{task}.jsonl'}\n")
            names[task] = [f"sst_{task}"]
    if "gsm8k" in items:
        _jsonl(root / "gsm8k.jsonl", [{"id": it.record.id, "question": it.record.prompt,
                                       "answer": it.record.meta.get("solution", f"#### {it.record.reference}")}
                                      for it in items["gsm8k"]])
        (root / "sst_gsm8k.yaml").write_text(
            f"include: {tasks / 'gsm8k/gsm8k-cot.yaml'}\ntask: sst_gsm8k\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {root / 'gsm8k.jsonl'}\n")
        names["gsm8k"] = ["sst_gsm8k"]
    return names


def run_harness(lm, root: Path, names: dict[str, list[str]], batch_size: int, steering) -> dict[str, list[dict]]:
    """Run the harness; per our task, its logged samples (one per item and filter)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, device=str(lm.device))
    manager = TaskManager(include_path=str(root))
    out: dict[str, list[dict]] = {}
    for task, harness_names in names.items():
        started = time.time()
        with steering.active() if steering is not None else contextlib.nullcontext():
            res = lm_eval.simple_evaluate(model=model, tasks=harness_names, task_manager=manager,
                                          log_samples=True, gen_kwargs=None)
        out[task] = [s for name in harness_names for s in res["samples"][name]]
        print(f"  lm-eval {task}: {len(out[task])} samples in {time.time() - started:.0f} s", flush=True)
    return out


def compare(task: str, ours: list[dict], samples: list[dict], items: list) -> dict[str, Any]:
    """Scores of both, their difference in points, prompt identity and item-level agreement."""
    by_id = {r["id"]: r for r in ours}
    item_by_id = {it.record.id: it for it in items}
    prompts_equal = agree = 0
    theirs_scores, ours_scores, diffs = [], [], []
    for s in samples:
        row = by_id[s["doc"]["id"]]
        it = item_by_id[row["id"]]
        contexts = {a[0] for a in s["arguments"]}
        if task == "mmlu_ll":
            mine = fmt.mmlu_ll_context(it.record.category, it.shots, it.record)
            lls = [float(x[0]) for x in s["filtered_resps"]]
            theirs_scores.append(float(s["acc"]))
            ours_scores.append(float(row["correct"]))
            agree += fmt.LETTERS[max(range(4), key=lambda j: lls[j])] == row["pred"]
            diffs += [abs(a - b) for a, b in zip(lls, row["logprobs"])]
        elif task.startswith("truthfulqa"):
            mine = fmt.truthfulqa_context(it.record.text)
            lls = [float(x[0]) for x in s["filtered_resps"]]
            theirs_scores.append(float(s["acc"]))
            diffs += [abs(a - b) for a, b in zip(lls, row["logprobs"])]
            if task == "truthfulqa_mc1":
                ours_scores.append(float(row["correct"]))
                agree += max(range(len(lls)), key=lambda j: lls[j]) == row["pred"]
            else:
                ours_scores.append(row["score"])
                agree += abs(float(s["acc"]) - row["score"]) < 0.005
        prompts_equal += contexts == {mine}
    n = len(samples)
    a, b = sum(ours_scores) / n, sum(theirs_scores) / n
    return {"n": n, "saesteer": a, "lm_eval": b, "diff_points": 100 * (a - b), "prompts_equal": prompts_equal,
            "items_agree": agree, "max_abs_logprob_diff": max(diffs) if diffs else None}


def compare_gsm8k(ours: list[dict], samples: list[dict], items: list) -> dict[str, Any]:
    from saesteer.evaluate.capability import gsm8k_prompt

    by_id = {r["id"]: r for r in ours}
    result: dict[str, Any] = {}
    for filt, our_key in (("flexible-extract", "correct"), ("strict-match", "correct_strict")):
        chosen = [s for s in samples if s.get("filter") == filt]
        n = len(chosen)
        theirs = sum(float(s["exact_match"]) for s in chosen) / n
        mine = sum(float(by_id[s["doc"]["id"]][our_key]) for s in chosen) / n
        result[filt] = {"n": n, "saesteer": mine, "lm_eval": theirs, "diff_points": 100 * (mine - theirs)}
    chosen = [s for s in samples if s.get("filter") == "flexible-extract"]
    same_text = same_answer = prompts_equal = 0
    for s in chosen:
        row = by_id[s["doc"]["id"]]
        same_text += s["resps"][0][0] == row["response"]
        theirs = s["filtered_resps"][0]
        same_answer += fmt.normalise_number(str(theirs)) == fmt.normalise_number(str(row["pred"] or "[invalid]"))
        prompts_equal += s["arguments"][0][0] == gsm8k_prompt(s["doc"]["question"])
    result.update({"n": len(chosen), "same_generation": same_text, "same_answer": same_answer,
                   "prompts_equal": prompts_equal})
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--mmlu", type=int, default=200, help="MMLU items (mmlu_ll)")
    p.add_argument("--truthfulqa", type=int, default=60, help="TruthfulQA items (MC1 and MC2)")
    p.add_argument("--gsm8k", type=int, default=30, help="GSM8K items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steer", default=None, help="Steering spec applied to both (plain specs only)")
    p.add_argument("--out", default="runs/capability_agreement")
    args = p.parse_args()

    import torch

    from saesteer.steer import Steering

    out = ensure_dir(args.out)
    lm = load_model(args.model)
    steering = Steering(lm, args.steer) if args.steer else None
    if steering is not None and steering.gate is not None:
        raise SystemExit("conditional specs cannot be compared: the harness's forwards carry no token roles")
    limits = {"mmlu_ll": args.mmlu, "truthfulqa_mc1": args.truthfulqa, "truthfulqa_mc2": args.truthfulqa,
              "gsm8k": args.gsm8k}
    limits = {t: n for t, n in limits.items() if n > 0}
    print(f"# saesteer vs lm-eval on {args.model} | {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} "
          f"| {torch.get_num_threads()} threads | seed {args.seed} | spec {steering.hash if steering else None}",
          flush=True)
    data = TaskData(None)
    items, ours, seconds = {}, {}, {}
    for task, n in limits.items():
        config = CapabilityConfig(tasks=(task,), limit=n, seed=args.seed, batch_size=args.batch_size, judge=None)
        items[task] = task_items(task, config, data)
        started = time.time()
        evaluate_capability(lm, out / f"saesteer_{task}", config, args.steer, progress=False)
        seconds[task] = time.time() - started
        ours[task] = [r for r in read_jsonl(out / f"saesteer_{task}" / "items.jsonl") if r["task"] == task]
        print(f"  saesteer {task}: {len(ours[task])} items in {seconds[task]:.0f} s", flush=True)
    root = ensure_dir(out / "harness_tasks")
    names = write_harness_tasks(root, items)
    started = time.time()
    samples = run_harness(lm, root, names, args.batch_size, steering)
    harness_seconds = time.time() - started
    report: dict[str, Any] = {"model": lm.describe(), "seed": args.seed, "limits": limits,
                              "spec_hash": steering.hash if steering else None, "seconds_saesteer": seconds,
                              "seconds_lm_eval": harness_seconds, "tasks": {}}
    print(f"\n{'task':<16}{'n':>5}{'saesteer':>10}{'lm-eval':>10}{'diff':>8}   prompts equal | items agree")
    for task in limits:
        if task == "gsm8k":
            r = compare_gsm8k(ours[task], samples[task], items[task])
            for filt in ("flexible-extract", "strict-match"):
                f = r[filt]
                print(f"{'gsm8k ' + filt[:6]:<16}{f['n']:>5}{f['saesteer']:>10.2%}{f['lm_eval']:>10.2%}"
                      f"{f['diff_points']:>+8.2f}   {r['prompts_equal']}/{r['n']} | same answer "
                      f"{r['same_answer']}/{r['n']}, same text {r['same_generation']}/{r['n']}")
        else:
            r = compare(task, ours[task], samples[task], items[task])
            print(f"{task:<16}{r['n']:>5}{r['saesteer']:>10.2%}{r['lm_eval']:>10.2%}{r['diff_points']:>+8.2f}   "
                  f"{r['prompts_equal']}/{r['n']} | {r['items_agree']}/{r['n']} "
                  f"(max |Δ log p| {r['max_abs_logprob_diff']:.1e})")
        report["tasks"][task] = r
    print(f"\nseconds: saesteer {sum(seconds.values()):.0f} | lm-eval {harness_seconds:.0f}")
    write_json(out / "agreement.json", report)
    worst = max(abs(r["diff_points"] if "diff_points" in r else r["flexible-extract"]["diff_points"])
                for r in report["tasks"].values())
    print(f"largest difference: {worst:.2f} points ({'within' if worst <= 1 else 'OUTSIDE'} the 1-point goal)")


if __name__ == "__main__":
    main()
