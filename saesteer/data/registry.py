"""Load any dataset by name: `load_records("xstest")`, `"harmbench,advbench"`, `"hf:org/name"`, a file.

Each loader reads the same file layout locally (a data directory like `shared/data`) and from
the public source, so local and hub runs parse identical bytes wherever the source is a file.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from saesteer.data.records import Record, conversation
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


def _text(path: Path, encoding: str = "utf-8") -> str:
    """A data file's text; a file in another encoding is a one-line error, not a UnicodeDecodeError."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise SaesteerError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                            "save it as UTF-8") from e


def _csv_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    text = _text(path, encoding)
    return list(csv.DictReader(io.StringIO(text)))


def _json(path: Path) -> Any:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise SaesteerError(f"{path} is not valid JSON ({e.msg}); replace the file") from e


def _get(row: dict[str, str], *keys: str) -> str:
    """First present key, matching case-insensitively (copies differ in header casing)."""
    lowered = {k.lower().strip(): v for k, v in row.items() if k is not None}
    for key in keys:
        if key.lower() in lowered and lowered[key.lower()] is not None:
            return lowered[key.lower()]
    raise SaesteerError(f"expected one of the columns {keys} but found {list(row)}")


# --- safety prompt sets ------------------------------------------------------------------------

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


def harmbench(subset: str | None) -> list[Record]:
    split = subset or "test"
    if split not in ("test", "val", "all"):
        raise SaesteerError("harmbench subsets are test, val and all (e.g. harmbench:val)")
    name = f"harmbench_behaviors_text_{split}.csv"
    rows = _csv_rows(local_or_download(f"harmbench/{name}", f"{HARMBENCH_URL}/{name}"))
    out = []
    for r in rows:
        kind = r["FunctionalCategory"]
        if kind == "copyright":  # judged by hashing, not refusal
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
        raise SaesteerError(f"bundled subsets are {', '.join(BUNDLED_PARTS + BUNDLED_CAPABILITY)}")
    if subset == "mc":
        return [Record(id=r["id"], prompt=r["question"], source="bundled:mc", category=r["category"],
                       choices=r["choices"], correct=[int(r["answer"])]) for r in _bundled_lines("capability_mc")]
    if subset == "math":
        return [Record(id=r["id"], prompt=r["question"], source="bundled:math", reference=str(r["answer"]),
                       meta={"solution": r["solution"]}) for r in _bundled_lines("capability_math")]
    return [Record(id=r["id"], prompt=r["prompt"], source=f"bundled:{part}", label=r["label"],
                   category=r.get("category"))
            for part in BUNDLED_PARTS if subset in (None, part) for r in _bundled_lines(part)]


PROMPT_KEYS = ("prompt", "instruction", "goal", "behavior", "forbidden_prompt", "question", "text", "input")
CONVERSATION_KEYS = ("messages", "conversation", "conversations")
LABELS = {"safe": "safe", "unsafe": "unsafe", "harmful": "unsafe", "unharmful": "safe",
          "benign": "safe", "harmless": "safe", "1": "unsafe", "0": "safe", "true": "unsafe", "false": "safe"}


ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _messages(value: list[Any], where: str) -> list[dict[str, str]]:
    """A conversation: role/content messages (ShareGPT's from/value too), with a user turn."""
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise SaesteerError(f"{where}: message {j} is {type(m).__name__} {m!r}, not an object like "
                                '{"role": "user", "content": "..."}')
        role = m.get("role") or SHAREGPT_ROLES.get(str(m.get("from")).lower())
        content = m.get("content", m.get("value"))
        if role not in ROLES:
            raise SaesteerError(f"{where}: message {j} needs a role of {', '.join(ROLES)} "
                                f"(keys 'role' and 'content'), got {dict(m)!r}")
        if not isinstance(content, str):
            raise SaesteerError(f"{where}: message {j} needs text 'content', got {content!r}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in out):
        raise SaesteerError(f"{where}: the conversation has no user message")
    return out


def records_from_rows(rows: list[dict[str, Any]], source: str) -> list[Record]:
    """Generic rows → records: finds the prompt (or messages) and an optional safety label."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SaesteerError(f"{source}: row {i} is {type(row).__name__} {str(row)[:40]}, not an object; "
                                'write one object per row, like {"prompt": "...", "label": "unsafe"}')
        lowered = {str(k).lower(): v for k, v in row.items()}
        # A conversation under a conversation key, or under `prompt` (a list of messages).
        key = next((k for k in (*CONVERSATION_KEYS, "prompt") if isinstance(lowered.get(k), list)), None)
        prompt: Any
        if key is not None:
            prompt = _messages(lowered[key], f"{source}: row {i}, {key!r}")
        else:
            prompt = next((lowered[k] for k in PROMPT_KEYS if isinstance(lowered.get(k), str)), None)
        if prompt is None:
            wrong = next((k for k in PROMPT_KEYS + CONVERSATION_KEYS if k in lowered), None)
            if wrong is not None:
                raise SaesteerError(f"{source}: row {i}: {wrong!r} is {type(lowered[wrong]).__name__} "
                                    f"{repr(lowered[wrong])[:40]}, expected text or a list of messages")
            raise SaesteerError(f"{source}: row {i} has none of the fields {PROMPT_KEYS + CONVERSATION_KEYS}")
        raw_label = next((lowered[k] for k in ("label", "prompt_harm_label", "harmful") if k in lowered), None)
        label = LABELS.get(str(raw_label).lower()) if raw_label is not None else None
        out.append(Record(id=str(lowered.get("id", f"{source}-{i}")), prompt=prompt, source=source,
                          label=label, category=lowered.get("category") or lowered.get("type"),
                          reference=lowered.get("reference") or lowered.get("answer")
                          if isinstance(lowered.get("reference") or lowered.get("answer"), str) else None))
    return out


def local_file(path: Path) -> list[Record]:
    if not path.exists():
        raise SaesteerError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    name = path.stem
    if suffix == ".txt":
        return [Record(id=f"{name}-{i}", prompt=line.strip(), source=name)
                for i, line in enumerate(_text(path).splitlines()) if line.strip()]
    if suffix == ".csv":
        return records_from_rows(_csv_rows(path, encoding="utf-8-sig"), name)
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(_text(path).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SaesteerError(f"{path}:{n} is not valid JSON ({e.msg})") from e
        return records_from_rows(rows, name)
    if suffix == ".json":
        data = _json(path)
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [])
        if not isinstance(data, list):
            raise SaesteerError(f"{path} holds a JSON {type(data).__name__}; expected a list of rows "
                                "(or an object holding one)")
        return records_from_rows(data, name)
    raise SaesteerError(f"unsupported dataset file type {suffix}; use .jsonl, .json, .csv or .txt")


def hub(spec: str) -> list[Record]:
    """`hf:<repo>[:<config>][:<split>]`."""
    parts = spec.split(":")
    repo = parts[0]
    config = parts[1] if len(parts) > 2 else None
    split = parts[-1] if len(parts) > 1 else "train"
    return records_from_rows([dict(r) for r in hub_dataset(repo, config, split=split)], repo)


def _label_subset(records: list[Record], subset: str | None) -> list[Record]:
    if subset is None:
        return records
    if subset not in ("safe", "unsafe"):
        raise SaesteerError("subsets of this dataset are safe and unsafe (e.g. xstest:safe)")
    return [r for r in records if r.label == subset]


LOADERS: dict[str, Callable[[str | None], list[Record]]] = {
    "xstest": xstest,
    "advbench": advbench,
    "harmbench": harmbench,
    "jailbreakbench": jailbreakbench,
    "strongreject": strongreject,
    "alpaca": alpaca,
    "wildguardtest": wildguardtest,
    **{name: refusal_direction_split(name) for name in
       ("harmful_train", "harmful_val", "harmful_test", "harmless_train", "harmless_val", "harmless_test")},
    "mmlu": mmlu,
    "truthfulqa": truthfulqa,
    "gsm8k": gsm8k,
    "pyrit": pyrit,
    "hh-rlhf-harmless": hh_rlhf_harmless,
    "bundled": bundled,
}


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def load_records(spec: str, *, limit: int | None = None, seed: int = 0) -> list[Record]:
    """Load one dataset or a comma-separated list: names (`xstest:safe`), `hf:<id>`, or files.

    With `limit`, each dataset contributes a seeded random sample of at most `limit` records
    (kept in dataset order), so small runs are representative and reproducible.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise SaesteerError(f"--limit must be at least 1 (or left out for every record), got {limit}")
    out: list[Record] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        records = _load_one(part)
        if not records:
            raise SaesteerError(f"dataset {part!r} is empty")
        if limit is not None and limit < len(records):
            keep = sorted(random.Random(seed).sample(range(len(records)), limit))
            records = [records[i] for i in keep]
        out += records
    if not out:
        raise SaesteerError("no dataset given")
    return out


def _load_one(spec: str) -> list[Record]:
    if spec.startswith("hf:"):
        return hub(spec[3:])
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".txt") or path.exists():
        return local_file(path)
    name, _, subset = spec.partition(":")
    loader = LOADERS.get(name)
    if loader is None:
        close = [n for n in LOADERS if n.startswith(name[:3])]
        raise SaesteerError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}"
                            + (f" (did you mean {close[0]}?)" if close else "")
                            + "; or hf:<id>, or a .jsonl/.csv/.txt file")
    return loader(subset or None)

