"""One loader per public dataset (XSTest, AdvBench, HarmBench, JailbreakBench, StrongREJECT,
Alpaca, refusal-direction splits, WildGuardTest, MMLU, TruthfulQA, GSM8K, PyRIT, HH-RLHF) and
the bundled sets. Each reads the same file layout from a local data directory (like
`shared/data`) and from the public source, so local and hub runs parse identical bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml

from saesteer.data.records import Record, conversation
from saesteer.data.rows import _csv_rows, _get, _json, _text
from saesteer.data.sources import hub_dataset, local_or_download
from saesteer.errors import SaesteerError

RD = "https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset"
XSTEST_URL = ("https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/"
              "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts.csv")
GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/"
             "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl")
HARMBENCH_URL = "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets"
JBB_URL = "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data"
TRUTHFULQA_URL = "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/data/mc_task.json"
ADVBENCH_URL = "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv"
STRONGREJECT_URL = ("https://raw.githubusercontent.com/alexandrasouly/strongreject/main/"
                    "strongreject_dataset/strongreject_dataset.csv")
PYRIT_URL = "https://raw.githubusercontent.com/microsoft/PyRIT/main/pyrit/datasets"


def _label_subset(records: list[Record], subset: str | None) -> list[Record]:
    if subset is None:
        return records
    if subset not in ("safe", "unsafe"):
        raise SaesteerError("subsets of this dataset are safe and unsafe (e.g. xstest:safe)")
    return [r for r in records if r.label == subset]


def xstest(subset: str | None) -> list[Record]:
    rows = _csv_rows(local_or_download("xstest/xstest_prompts.csv", XSTEST_URL))
    out = [Record(id=f"xstest-{r['id']}", prompt=r["prompt"], source="xstest", label=r["label"],
                  category=r["type"], meta={"focus": r.get("focus"), "note": r.get("note")})
           for r in rows]
    return _label_subset(out, subset)


def advbench(subset: str | None) -> list[Record]:
    rows = _csv_rows(local_or_download("advbench/harmful_behaviors.csv", ADVBENCH_URL))
    return [Record(id=f"advbench-{i}", prompt=r["goal"], source="advbench", label="unsafe",
                   meta={"target": r.get("target")}) for i, r in enumerate(rows)]


HARMBENCH_KINDS = ("standard", "contextual")


def harmbench(subset: str | None) -> list[Record]:
    """HarmBench's text behaviours; `subset` is a split (test, val, all), a functional category
    (standard, contextual: of the test split), or both (`val-standard`)."""
    split, _, kind_wanted = (subset or "test").partition("-")
    if split in HARMBENCH_KINDS and not kind_wanted:
        split, kind_wanted = "test", split
    if split not in ("test", "val", "all") or kind_wanted not in ("", *HARMBENCH_KINDS):
        raise SaesteerError(f"unknown harmbench subset {subset!r}: use a split (test, val, all), a functional "
                            "category (standard, contextual) or both (e.g. harmbench:val-standard)")
    name = f"harmbench_behaviors_text_{split}.csv"
    rows = _csv_rows(local_or_download(f"harmbench/{name}", f"{HARMBENCH_URL}/{name}"))
    out = []
    for r in rows:
        kind = r["FunctionalCategory"]
        if kind == "copyright" or (kind_wanted and kind != kind_wanted):  # copyright: judged by hashing, not refusal
            continue
        prompt = r["Behavior"]
        if kind == "contextual" and r.get("ContextString"):
            prompt = f"{r['ContextString']}\n\n---\n\n{prompt}"
        out.append(Record(id=f"harmbench-{r['BehaviorID']}", prompt=prompt, source="harmbench",
                          label="unsafe", category=r["SemanticCategory"], meta={"functional": kind}))
    return out


def jailbreakbench(subset: str | None) -> list[Record]:
    parts = {"harmful": ("harmful-behaviors.csv", "unsafe"), "benign": ("benign-behaviors.csv", "safe")}
    if subset not in (None, *parts):
        raise SaesteerError("jailbreakbench subsets are harmful and benign")
    out = []
    for part, (name, label) in parts.items():
        if subset and part != subset:
            continue
        rows = _csv_rows(local_or_download(f"jailbreakbench/{name}", f"{JBB_URL}/{name}"))
        out += [Record(id=f"jbb-{part}-{i}", prompt=_get(r, "goal"), source="jailbreakbench",
                       label=label, category=_get(r, "category"),
                       meta={"behavior": _get(r, "behavior")}) for i, r in enumerate(rows)]
    return out


def strongreject(subset: str | None) -> list[Record]:
    rows = _csv_rows(local_or_download("strongreject/strongreject_dataset.csv", STRONGREJECT_URL))
    return [Record(id=f"strongreject-{i}", prompt=r["forbidden_prompt"], source="strongreject",
                   label="unsafe", category=r["category"], meta={"origin": r.get("source")})
            for i, r in enumerate(rows)]


def alpaca(subset: str | None) -> list[Record]:
    rows = _json(local_or_download("refusal_direction/processed/alpaca.json", f"{RD}/processed/alpaca.json"))
    return [Record(id=f"alpaca-{i}", prompt=r["instruction"], source="alpaca", label="safe")
            for i, r in enumerate(rows)]


def refusal_direction_split(name: str) -> Callable[[str | None], list[Record]]:
    label = "unsafe" if name.startswith("harmful") else "safe"

    def load(subset: str | None) -> list[Record]:
        rows = _json(local_or_download(f"refusal_direction/splits/{name}.json", f"{RD}/splits/{name}.json"))
        return [Record(id=f"{name}-{i}", prompt=r["instruction"], source=name, label=label,
                       category=r.get("category")) for i, r in enumerate(rows)]

    return load


WILDGUARD_LABELS = {"harmful": "unsafe", "unharmful": "safe"}


def wildguard_records(rows: list[dict[str, Any]]) -> list[Record]:
    """Records from rows in the WildGuardMix schema (prompt, prompt_harm_label, adversarial, ...)."""
    out = []
    for i, r in enumerate(rows):
        if "prompt" not in r or "prompt_harm_label" not in r:
            raise SaesteerError("WildGuardMix rows need `prompt` and `prompt_harm_label` fields")
        label = WILDGUARD_LABELS.get(str(r["prompt_harm_label"]).lower())
        out.append(Record(id=f"wildguardtest-{i}", prompt=r["prompt"], source="wildguardtest",
                          label=label, category=r.get("subcategory"),
                          meta={"adversarial": r.get("adversarial"),
                                "response_refusal_label": r.get("response_refusal_label")}))
    return out


def wildguardtest(subset: str | None) -> list[Record]:
    from saesteer.data.sources import data_dir

    root = data_dir()
    if root is not None:
        path = root / "wildguardtest" / "wildguardtest.jsonl"
        if not path.exists():
            raise SaesteerError(f"missing file wildguardtest/wildguardtest.jsonl in {root} "
                                "(WildGuardMix schema, one JSON object per line)")
        rows = [json.loads(line) for line in _text(path).splitlines() if line.strip()]
    else:
        rows = list(hub_dataset("allenai/wildguardmix", "wildguardtest", split="test"))
    return _label_subset(wildguard_records(rows), subset)


# --- capability sets ---------------------------------------------------------------------------

def mmlu(subset: str | None) -> list[Record]:
    """MMLU test items (`mmlu`, `mmlu:<subject>`) or the 5-shot exemplars (`mmlu:dev`)."""
    from saesteer.data.sources import data_dir

    split = "dev" if subset == "dev" else "test"
    root = data_dir()
    out = []
    if root is not None:
        folder = root / "mmlu" / split
        files = sorted(folder.glob(f"*_{split}.csv"))
        if not files:
            raise SaesteerError(f"missing mmlu/{split}/*_{split}.csv in data directory {root}")
        for f in files:
            subject = f.name.removesuffix(f"_{split}.csv")
            for i, r in enumerate(_csv_rows(f)):
                out.append(_mmlu_record(subject, i, r["question"],
                                        [r[f"choice{j}"] for j in range(4)], int(r["answer"]), split))
    else:
        for i, r in enumerate(hub_dataset("cais/mmlu", "all", split=split)):
            out.append(_mmlu_record(r["subject"], i, r["question"], list(r["choices"]), int(r["answer"]), split))
    if subset not in (None, "dev"):
        out = [r for r in out if r.category == subset]
        if not out:
            raise SaesteerError(f"no MMLU subject named {subset!r}")
    return out


def _mmlu_record(subject: str, i: int, question: str, choices: list[str], answer: int,
                 split: str) -> Record:
    return Record(id=f"mmlu-{split}-{subject}-{i}", prompt=question, source="mmlu",
                  category=subject, choices=choices, correct=[answer])


def truthfulqa(subset: str | None) -> list[Record]:
    """TruthfulQA multiple choice: `choices`/`correct` hold MC1; `meta` holds the MC2 targets."""
    rows = _json(local_or_download("truthfulqa/mc_task.json", TRUTHFULQA_URL))
    out = []
    for i, r in enumerate(rows):
        mc1, mc2 = r["mc1_targets"], r["mc2_targets"]
        out.append(Record(id=f"truthfulqa-{i}", prompt=r["question"], source="truthfulqa",
                          choices=list(mc1), correct=[j for j, v in enumerate(mc1.values()) if v],
                          meta={"mc2_choices": list(mc2),
                                "mc2_correct": [j for j, v in enumerate(mc2.values()) if v]}))
    return out


def gsm8k(subset: str | None) -> list[Record]:
    path = local_or_download("gsm8k/test.jsonl", GSM8K_URL)
    out = []
    for i, line in enumerate(_text(path).splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        final = r["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        out.append(Record(id=f"gsm8k-{i}", prompt=r["question"], source="gsm8k", reference=final,
                          meta={"solution": r["answer"]}))
    return out


# --- conversations -----------------------------------------------------------------------------

def pyrit(subset: str | None) -> list[Record]:
    """PyRIT seed prompts: `pyrit:objectives` (single-turn harmful objectives, the default) or
    `pyrit:multiturn` (fixed conversations to replay; each ends in a user turn)."""
    kind = subset or "objectives"
    if kind not in ("objectives", "multiturn"):
        raise SaesteerError("pyrit subsets are objectives and multiturn")
    files = (["airt/illegal", "airt/harms", "airt/hate", "airt/harassment", "airt/violence",
              "airt/malware", "airt/misinformation", "airt/scams", "airt/sexual"]
             if kind == "objectives" else
             ["examples/illegal-multiple-multiturn-dataset", "examples/psych-crisis-conversations",
              "airt/hate", "0din/hex_recipe_book"])
    out: list[Record] = []
    for name in files:
        rel = f"pyrit_crescendo/seed_datasets/local/{name}.prompt"
        doc = yaml.safe_load(_text(local_or_download(rel, f"{PYRIT_URL}/seed_datasets/local/{name}.prompt")))
        seeds = doc.get("seeds", [])
        groups: dict[str, list[dict]] = {}
        for s in seeds:
            if "prompt_group_alias" in s or "sequence" in s:
                groups.setdefault(str(s.get("prompt_group_alias", name)), []).append(s)
            elif kind == "objectives" and isinstance(s.get("value"), str) and s["value"].isascii():
                cats = s.get("harm_categories") or doc.get("harm_categories")
                out.append(Record(id=f"pyrit-{name}-{len(out)}", prompt=s["value"], source="pyrit",
                                  label="unsafe", category=cats[0] if isinstance(cats, list) else cats))
        if kind == "multiturn":
            for alias, group in groups.items():
                group.sort(key=lambda s: int(s.get("sequence", 0)))
                turns = [(s.get("role", "user"), str(s["value"])) for s in group]
                while turns and turns[-1][0] != "user":
                    turns.pop()
                if len(turns) >= 2:
                    cats = group[0].get("harm_categories") or doc.get("harm_categories")
                    out.append(Record(id=f"pyrit-{name}-{alias}", prompt=conversation(*turns),
                                      source="pyrit", label="unsafe",
                                      category=(cats[0] if isinstance(cats, list) and cats else cats) or None))
    return out


def hh_rlhf_harmless(subset: str | None) -> list[Record]:
    """Anthropic HH-RLHF harmless red-team conversations, cut before the last assistant reply."""
    from saesteer.data.records import split_hh_dialogue
    from saesteer.data.sources import data_dir

    if data_dir() is not None:
        path = local_or_download("corpus/hh_rlhf_harmless_test/harmless-base_test.jsonl", None)
        dialogues = [json.loads(line)["chosen"] for line in _text(path).splitlines()
                     if line.strip()]
    else:
        dialogues = [r["chosen"] for r in hub_dataset("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")]
    out = []
    for i, dialogue in enumerate(dialogues):
        turns = split_hh_dialogue(dialogue)
        while turns and turns[-1]["role"] != "user":
            turns.pop()
        if turns:
            out.append(Record(id=f"hh-harmless-{i}", prompt=turns if len(turns) > 1 else turns[0]["content"],
                              source="hh-rlhf-harmless", label=None))
    return out


# --- bundled, generic and local files ------------------------------------------------------------

BUNDLED_PARTS = ("harmful", "harmless", "borderline")
BUNDLED_CAPABILITY = ("mc", "math")


def _bundled_lines(name: str) -> list[dict[str, Any]]:
    text = resources.files("saesteer.data").joinpath(f"bundled/{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def bundled(subset: str | None) -> list[Record]:
    """Sets written for saesteer (no network, no data directory needed): `bundled` is the three
    prompt sets (harmful, harmless, borderline = safe but scary-sounding); `bundled:mc` (80
    four-choice questions) and `bundled:math` (40 word problems) are small capability sets."""
    if subset not in (None, *BUNDLED_PARTS, *BUNDLED_CAPABILITY):
        import difflib

        close = difflib.get_close_matches(subset or "", BUNDLED_PARTS + BUNDLED_CAPABILITY, n=1)
        raise SaesteerError(f"unknown bundled subset {subset!r}"
                            + (f" (did you mean bundled:{close[0]}?)" if close else "")
                            + f"; bundled subsets are {', '.join(BUNDLED_PARTS + BUNDLED_CAPABILITY)}")
    if subset == "mc":
        return [Record(id=r["id"], prompt=r["question"], source="bundled:mc", category=r["category"],
                       choices=r["choices"], correct=[int(r["answer"])]) for r in _bundled_lines("capability_mc")]
    if subset == "math":
        return [Record(id=r["id"], prompt=r["question"], source="bundled:math", reference=str(r["answer"]),
                       meta={"solution": r["solution"]}) for r in _bundled_lines("capability_math")]
    return [Record(id=r["id"], prompt=r["prompt"], source=f"bundled:{part}", label=r["label"],
                   category=r.get("category"))
            for part in BUNDLED_PARTS if subset in (None, part) for r in _bundled_lines(part)]
