"""Refusal judge accuracy, leave one model out, on every labelled set we have.

    SAESTEER_DATA=/path/to/shared/data python benchmarks/judge_accuracy.py [--llm URL --model NAME] [--hf MODEL]

Labelled models: XSTest v2's human-labelled completions of GPT-4 and Llama-2 (450 each), and
answers of SmolLM2-135M-Instruct (unsteered, steered with CAA, and steered by adding SAE refusal
latents) and Qwen2.5-Coder-0.5B-Instruct (plain, and under Mistral's and Llama-2's safety system
prompts) that we labelled by reading them (benchmarks/labels/, GUIDELINES.md there), and answers
of five chat models from the public corpus (AlpacaEval outputs of Claude 2.1, Llama-2-70B-chat,
GPT-4 1106 and Llama-3-8B-Instruct; HH-RLHF's red-team assistant), drawn by
judge_corpus_sample.py and labelled by reading them. Refusal is the positive class; a partial
refusal counts as a refusal. For each model it prints the phrase tier (no training), the
classifier refitted on the *other* models only, the two combined as `auto` combines them (a
refusal if either says so), and any LLM judge given, with false positives and negatives, per refusal
family where the labels have one, and the coherence check's agreement with the hand labels. The
`test` splits (smollm2's holds every SAE-steered answer) were never read while the phrase
patterns were written; the XSTest sets and the `dev` splits were.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saesteer.data.sources import data_dir  # noqa: E402
from saesteer.judge import Judgement, get_judge  # noqa: E402
from saesteer.judge.coherence import check_coherence  # noqa: E402

LABELS = Path(__file__).with_name("labels")
XSTEST = ("gpt4", "llama2new")
# model -> its hand-label files (smollm2: unsteered + CAA answers, and answers steered with SAE latents)
HAND = {"smollm2": ("smollm2_answers.jsonl", "smollm2_saeadd_answers.jsonl"),
        # the demo's own answers (unsteered, SAE clamp, CAA 2x, the search's pick and its train-prompt
        # candidates), labelled after the patterns were written: smollm2 again, but styles never read
        "smollm2 demo": ("smollm2_demo_answers.jsonl",),
        "qwen2.5-0.5b": ("qwen_answers.jsonl", "qwen_guardrail_answers.jsonl")}
# model -> answers of chat models from the public corpus, labelled by reading (judge_corpus_sample.py)
CORPUS = {"alpaca_eval (4 chat models)": "alpaca_eval:", "hh_rlhf assistant": "hh_rlhf:"}
CORPUS_LABELS = "corpus_answers.jsonl"
PROMPT_SETS = ("harmbench,advbench,strongreject,jailbreakbench,xstest,alpaca,bundled:harmful,bundled:harmless,"
               "bundled:borderline")


def load_xstest(model: str) -> list[dict]:
    path = data_dir() / f"xstest/model_completions/xstest_v2_completions_{model}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{"prompt": r["prompt"], "response": r["completion"] or "", "y": r["final_label"] != "1_full_compliance",
             "partial": r["final_label"] == "3_partial_refusal", "family": None, "coherent": None,
             "split": "dev", "group": r["type"]} for r in rows]


def prompts_by_id() -> dict[tuple[str, str], str]:
    from saesteer.data import load_records

    return {(r.source, r.id): r.text for r in load_records(PROMPT_SETS)}


def load_hand(file: str, prompts: dict[tuple[str, str], str]) -> list[dict]:
    rows = []
    for line in (LABELS / file).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.append({"prompt": prompts.get((r["dataset"], r["id"]), ""), "response": r["response"],
                     "y": r["human_label"] != "full_compliance", "partial": r["human_label"] == "partial_refusal",
                     "family": r["family"], "coherent": r["coherent"], "split": r.get("split", "test"),
                     "group": r["condition"], "label": r.get("label")})
    return rows


def load_corpus(prefix: str, file: str = CORPUS_LABELS) -> list[dict]:
    """Hand labels of corpus answers whose source starts with `prefix`, texts read back from the data
    directory (the label file holds only their addresses)."""
    from benchmarks.judge_corpus_sample import corpus_rows

    path = LABELS / file
    if not path.exists():
        return []
    cache: dict[str, dict[int, dict]] = {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if not r["source"].startswith(prefix):
            continue
        text = cache.setdefault(r["source"], corpus_rows(r["source"]))[r["index"]]
        rows.append({**text, "y": r["human_label"] != "full_compliance",
                     "partial": r["human_label"] == "partial_refusal", "family": r["family"],
                     "coherent": r["coherent"], "split": r["split"], "group": r["source"].split(":", 1)[1],
                     "label": r["stratum"]})
    return rows


def scores(rows: list[dict], judged: list[Judgement]) -> dict:
    y = np.array([r["y"] for r in rows])
    p = np.array([j.refusal for j in judged])
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    return {"n": len(y), "acc": float((y == p).mean()), "prec": tp / max(tp + fp, 1), "rec": tp / max(tp + fn, 1),
            "fp": fp, "fn": fn}


def line(name: str, s: dict) -> str:
    return f"| {name} | {s['n']} | {s['acc']:.1%} | {s['prec']:.1%} | {s['rec']:.1%} | {s['fp']} | {s['fn']} |"


HEADER = "| judge | n | accuracy | precision | recall | FP | FN |\n|---|---|---|---|---|---|---|"


def per_family(rows: list[dict], judged: list[Judgement]) -> str:
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, j in zip(rows, judged):
        fam = r["family"] or ("refusal" if r["y"] else "none")
        hits[fam][0] += j.refusal == r["y"]
        hits[fam][1] += 1
    return ", ".join(f"{f} {a}/{n}" for f, (a, n) in sorted(hits.items()))


def coherence_agreement(rows: list[dict]) -> str:
    labelled = [r for r in rows if r["coherent"] is not None]
    if not labelled:
        return ""
    c = Counter((r["coherent"], check_coherence(r["response"]).coherent) for r in labelled)
    agree = c[(True, True)] + c[(False, False)]
    return (f"coherence check vs hand labels: {agree}/{len(labelled)} agree ({agree / len(labelled):.1%}); "
            f"broken by hand {c[(False, True)] + c[(False, False)]}, caught {c[(False, False)]}; "
            f"coherent by hand but flagged {c[(True, False)]}")


def judge_tolerant(judge, rows: list[dict], batch: int = 8) -> tuple[list[Judgement], int]:
    """An LLM judge's verdicts, a batch at a time; a reply it cannot read counts as a wrong
    verdict (the judge raises rather than guess) and is counted."""
    from saesteer.errors import SaesteerError

    out: list[Judgement] = []
    unreadable = 0
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        try:
            out += judge.judge([r["prompt"] for r in part], [r["response"] for r in part])
            continue
        except SaesteerError:
            pass
        for r in part:
            try:
                out += judge.judge([r["prompt"]], [r["response"]])
            except SaesteerError:
                unreadable += 1
                out.append(Judgement(not r["y"], False, 0.5, "unreadable"))
    return out, unreadable


def early_stop_agreement(rows: list[dict]) -> str:
    """Feed each answer word by word to the phrase tier's `decided`; at the first verdict, compare
    it (and the judgement of the cut text) with the judgement of the whole answer."""
    judge = get_judge("phrase")
    decided = agree = cut_agree = saved = total = 0
    for r in rows:
        full = judge.judge([r["prompt"]], [r["response"]])[0].refusal
        words = r["response"].split(" ")
        total += len(r["response"].split())
        for k in range(1, len(words) + 1):
            prefix = " ".join(words[:k])
            verdict = judge.decided(r["prompt"], prefix)
            if verdict is not None:
                decided += 1
                agree += verdict == full
                cut_agree += judge.judge([r["prompt"]], [prefix])[0].refusal == full
                saved += len(r["response"].split()) - len(prefix.split())
                break
    return (f"decided early on {decided}/{len(rows)}; that verdict agrees with the whole answer's on {agree}/{decided}, "
            f"the judgement of the cut text on {cut_agree}/{decided}; {saved / max(total, 1):.0%} of answer words "
            "need not be generated")


def judge_at(rev: str, path: str = "saesteer/evaluate/judge_phrases.py"):
    """The phrase tier's verdict function as it was at git revision `rev` (for before/after tables)."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout
    file = Path(tempfile.mkdtemp()) / "old_phrases.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_phrases", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_phrases"] = module   # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return lambda text: module.phrase_verdict(text).refusal


def rates_by_condition(rows: list[dict], old_rev: str) -> None:
    """Unsafe refusal and safe over-refusal per steering condition: by hand, by the judge before
    this change, by `auto` now, and coherent refusal (by hand and by `auto` + the coherence check)."""
    old = judge_at(old_rev)
    new = get_judge("auto")
    print(f"\n### refusal rates per condition on the hand-labelled smollm2 answers (judge before = {old_rev})\n")
    print("| condition | prompts | by hand | judge before | `auto` now | coherent refusal by hand | "
          "coherent refusal, `auto` + coherence check | broken by hand |\n|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["group"], r["label"])].append(r)
    for (cond, label), items in sorted(groups.items()):
        n = len(items)
        hand = sum(r["y"] for r in items)
        before = sum(old(r["response"]) for r in items)
        now = [j.refusal for j in new.judge([r["prompt"] for r in items], [r["response"] for r in items])]
        coh_hand = sum(r["y"] and r["coherent"] for r in items)
        coh_now = sum(v and check_coherence(r["response"]).coherent for v, r in zip(now, items))
        broken = sum(not r["coherent"] for r in items)
        pc = lambda k: f"{k / n:.0%}"  # noqa: E731
        print(f"| {cond} ({label}) | {n} | {pc(hand)} | {pc(before)} | {pc(sum(now))} | {pc(coh_hand)} | "
              f"{pc(coh_now)} | {pc(broken)} |")


SYNTHETIC = {
    "synthetic_styles.jsonl":
        "240 answers in the voices of eight assistants (Llama-2-chat under its original system prompt, "
        "Mistral-7B-Instruct with and without a guardrail prompt, GPT-4, Claude 2, Llama-3-8B, a 135M-500M model, "
        "Vicuna/Zephyr) to XSTest-style prompts (2026-12-07). The phrase tier scored 229 of 240 before its misses "
        "were read; three rules were then changed (233 of 240).",
    "synthetic_styles_xstest3.jsonl":
        "210 answers to 70 XSTest prompts (40 safe, 30 unsafe) in the voices of the three chat models whose XSTest "
        "completions issue #14 holds back (Llama-2-70b-chat under its original system prompt, Mistral-7B-Instruct "
        "with the guardrail prompt and without), by a second helper (2026-12-07, later). The phrase tier scored "
        "196 of 210 before its misses were read; three rules were then added (202 of 210).",
    "synthetic_styles_xstest3b.jsonl":
        "150 answers to 50 other XSTest prompts (30 safe, 20 unsafe) in the same three voices, by a third helper "
        "(2026-12-07, evening), written after those rules: 140 of 150 before its misses were read (138 with the "
        "judge of that morning); two connectors were then added (144 of 150).",
    "synthetic_styles_xstest4.jsonl":
        "180 answers to 60 further XSTest prompts (36 safe, 24 unsafe) in the same three voices, by a fourth helper "
        "(2026-12-07, the next session): 156 of 180 before its misses were read, guarded Mistral's lectures "
        "without a refusal phrase the most missed (45 of 60); moral-statement lectures and four connectors were "
        "then added (165 of 180).",
    "synthetic_styles_xstest5.jsonl":
        "180 answers to 60 further XSTest prompts in the same three voices, by a fifth helper, written after the "
        "rules set 4 led to (2026-12-07): 159 of 180 (158 with the judge before them). Its misses were read but no "
        "rule was written from them then (2026-12-07); the next session read them and wrote rules from them "
        "(rebuttals of a loaded premise, pointers to another topic, a lone late stance): 175 of 180.",
    "synthetic_styles_xstest6.jsonl":
        "180 answers to 60 further XSTest prompts in the same three voices, by a sixth helper (2026-12-07, "
        "later session), written after those rules and scored before any was read: `auto` 149 of 180 with "
        "the judge before them, 150 after; guarded Mistral's lectures and reframings the most missed.",
}
"""Answers *written* by helpers who never saw the judge's patterns, labelled by XSTest's guidelines:
not any model's real output, so they are reported apart and never fitted on. Once their misses
were read they are no longer unseen."""


def synthetic_styles(*judges) -> None:
    """Per voice, each judge's accuracy and false positives / negatives on the helper-written sets."""
    for name, about in SYNTHETIC.items():
        path = LABELS / name
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ys = [r["label"] != "full_compliance" for r in rows]
        counts = []     # per judge: style -> [right, n, fp, fn]
        for judge in judges:
            by_style: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for r, y, j in zip(rows, ys, judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])):
                k = by_style[r["style"]]
                k[0] += j.refusal == y
                k[1] += 1
                k[2] += j.refusal and not y
                k[3] += y and not j.refusal
            by_style["all"] = [sum(v[i] for v in list(by_style.values())) for i in range(4)]
            counts.append(by_style)
        print(f"\n### synthetic answers ({name}, never fitted on)\n\n{about}\n")
        names = " | ".join(f"`{getattr(j, 'name', j)}` | FP | FN" for j in judges)
        print(f"| style | n | {names} |\n|---|---|" + "---|---|---|" * len(judges))
        for style in counts[0]:
            n = counts[0][style][1]
            cells = " | ".join(f"{c[style][0] / n:.1%} | {c[style][2]} | {c[style][3]}" for c in counts)
            print(f"| {style} | {n} | {cells} |")


def load_labelled() -> dict[str, list[dict]]:
    """Every labelled set of real answers, by model (the helper-written sets are apart)."""
    data = {m: load_xstest(m) for m in XSTEST}
    prompts = prompts_by_id()
    for model, files in HAND.items():
        rows = [r for file in files if (LABELS / file).exists() for r in load_hand(file, prompts)]
        if rows:
            data[model] = rows
    for model, prefix in CORPUS.items():
        rows = load_corpus(prefix)
        if rows:
            data[model] = rows
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--llm", help="OpenAI-compatible base URL for the LLM tier")
    ap.add_argument("--model", help="model name at --llm")
    ap.add_argument("--prompt-style", choices=("wildguard", "xstest"))
    ap.add_argument("--hf", help="local model for the hf:<model> tier")
    ap.add_argument("--llm-limit", type=int, default=100, help="rows sampled per model for the LLM tiers")
    ap.add_argument("--no-classifier", action="store_true", help="skip the classifier (needs the embedding model)")
    ap.add_argument("--errors", type=int, default=0, help="print up to N misjudged answers per model")
    ap.add_argument("--before", default="7a712fb", help="git revision of the judge to compare rates with")
    ap.add_argument("--fit-shipped", type=Path, metavar="WEIGHTS",
                    help="also fit the classifier on every labelled model and write it here (the shipped weights)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.data_dir:
        from saesteer.data import set_data_dir

        set_data_dir(args.data_dir)
    if data_dir() is None:
        sys.exit("set SAESTEER_DATA (or pass --data-dir) to the folder holding xstest/ and the prompt sets")
    data = load_labelled()
    extra = []
    if args.llm:
        extra.append((f"llm {args.model}", get_judge("llm", base_url=args.llm, model=args.model,
                                                     prompt_style=args.prompt_style)))
    if args.hf:
        extra.append((f"hf:{args.hf}", get_judge(f"hf:{args.hf}", prompt_style=args.prompt_style)))
    phrase = get_judge("phrase")
    for test, rows in data.items():
        views = {"all": rows}
        if any(r["split"] == "test" for r in rows) and any(r["split"] == "dev" for r in rows):
            views["test split (never read while writing patterns)"] = [r for r in rows if r["split"] == "test"]
            groups = sorted({r["group"] for r in rows})
            if 1 < len(groups) <= 4:   # the conditions of one model (e.g. its system prompts), test split
                views.update({f"{g}, test split": [r for r in rows if r["group"] == g and r["split"] == "test"]
                              for g in groups})
        others = [m for m in data if m != test]
        print(f"\n### {test}: tiers that never saw it (classifier fitted on {', '.join(others)})\n")
        for view, vrows in views.items():
            prompts_, responses = [r["prompt"] for r in vrows], [r["response"] for r in vrows]
            print(f"{view}:\n\n{HEADER}")
            judged = phrase.judge(prompts_, responses)
            print(line("phrase", scores(vrows, judged)))
            if not args.no_classifier:
                from saesteer.judge.classifier import ClassifierJudge, save_weights, train_classifier
                from saesteer.judge.tiers import CombinedJudge

                t0 = time.time()
                train = [r for m in others for r in data[m]]
                w = train_classifier([r["response"] for r in train], [r["y"] for r in train],
                                     prompts=[r["prompt"] for r in train], note=f"benchmark: without {test}")
                tmp = Path("/tmp") / f"saesteer_judge_without_{test}.json"
                save_weights(tmp, w)
                clf = ClassifierJudge(tmp)
                by_clf = clf.judge(prompts_, responses)
                print(line("classifier (fitted on the others)", scores(vrows, by_clf)))
                combined = CombinedJudge(weights=str(tmp)).judge(prompts_, responses)
                print(line("combined = `auto` (default): phrase or the classifier fitted on the others",
                           scores(vrows, combined)))
                print(f"| (classifier fit + judge {time.time() - t0:.0f} s) | | | | | | |")
            for name, judge in extra:
                sample = vrows if len(vrows) <= args.llm_limit else \
                    [vrows[i] for i in sorted(random.Random(0).sample(range(len(vrows)), args.llm_limit))]
                judged_llm, unreadable = judge_tolerant(judge, sample)
                print(line(f"{name} ({len(sample)} sampled; {unreadable} replies unreadable, counted wrong)",
                           scores(sample, judged_llm)))
            if any(r["family"] for r in vrows):
                print(f"\nphrase tier correct per family: {per_family(vrows, judged)}")
            print()
        coh = coherence_agreement(rows)
        if coh:
            print(coh + "\n")
        if args.errors:
            judged = phrase.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
            wrong = [(r, j) for r, j in zip(rows, judged) if r["y"] != j.refusal and r["split"] == "dev"]
            for r, j in wrong[:args.errors]:
                kind = "FN" if r["y"] else "FP"
                print(f"  {kind} [{r['family']}] {r['response'][:200]!r} {j.evidence}")
    synthetic_styles(phrase, get_judge("auto"))
    print("\n### early stop (phrase tier `decided`, fed word by word)\n")
    for model, rows in data.items():
        print(f"- {model}: {early_stop_agreement(rows)}")
    if "smollm2" in data:
        rates_by_condition(data["smollm2"], args.before)
    if args.fit_shipped:
        from saesteer.judge.classifier import save_weights, train_classifier

        pooled = [r for rows in data.values() for r in rows]
        w = train_classifier([r["response"] for r in pooled], [r["y"] for r in pooled],
                             prompts=[r["prompt"] for r in pooled],
                             note="benchmarks/judge_accuracy.py --fit-shipped: " + ", ".join(
                                 f"{m} ({len(rows)})" for m, rows in data.items()))
        save_weights(args.fit_shipped, w)
        print(f"\nclassifier fitted on {len(pooled)} labelled answers of {len(data)} models -> {args.fit_shipped}")


if __name__ == "__main__":
    main()
