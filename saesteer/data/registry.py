"""Load any dataset by name: `load_records("xstest")`, `"harmbench,advbench"`, `"hf:org/name"`, a file.

Each loader reads the same file layout locally (a data directory like `shared/data`) and from
the public source, so local and hub runs parse identical bytes wherever the source is a file.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from saesteer.data.public import (advbench, alpaca, bundled, gsm8k, harmbench, hh_rlhf_harmless, jailbreakbench, mmlu,
                                  pyrit, refusal_direction_split, strongreject, truthfulqa, wildguardtest, xstest)
from saesteer.data.records import Record
from saesteer.data.rows import local_file, records_from_rows
from saesteer.data.sources import hub_dataset
from saesteer.errors import SaesteerError


def hub(spec: str) -> list[Record]:
    """`hf:<repo>[:<config>][:<split>]`."""
    parts = spec.split(":")
    repo = parts[0]
    config = parts[1] if len(parts) > 2 else None
    split = parts[-1] if len(parts) > 1 else "train"
    return records_from_rows([dict(r) for r in hub_dataset(repo, config, split=split)], repo, skip_empty=True)


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


NO_SUBSETS = ("advbench", "strongreject", "alpaca", "truthfulqa", "gsm8k", "hh-rlhf-harmless", "harmful_train",
              "harmful_val", "harmful_test", "harmless_train", "harmless_val", "harmless_test")
"""Datasets with no `:subset`; a subset given to one is a typo, not something to ignore."""


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def load_records(spec: str, *, limit: int | None = None, seed: int = 0, exclude_label: str | None = None) -> list[Record]:
    """Load one dataset or a comma-separated list: names (`xstest:safe`), `hf:<id>`, or files;
    `NAME@train` / `NAME@test` keep a fixed hash-chosen half of any of them.

    With `limit`, each dataset contributes a seeded random sample of at most `limit` records
    (kept in dataset order), so small runs are representative and reproducible. With
    `exclude_label` (safe or unsafe), records with that label are left out before sampling.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise SaesteerError(f"--limit must be at least 1 (or left out for every record), got {limit}")
    out: list[Record] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        records = _load_one(part)
        if not records:
            raise SaesteerError(f"dataset {part!r} is empty")
        if exclude_label is not None:
            records = [r for r in records if r.label != exclude_label]
            if not records:
                raise SaesteerError(f"no prompts in {part} once those labelled {exclude_label} are left out")
        if limit is not None and limit < len(records):
            keep = sorted(random.Random(seed).sample(range(len(records)), limit))
            records = [records[i] for i in keep]
        out += records
    if not out:
        raise SaesteerError("no dataset given")
    _check_unique(out, spec)
    return out


def _check_unique(records: list[Record], spec: str) -> None:
    """Results are keyed by record id, so two records with one id would overwrite each other."""
    seen: dict[str, Record] = {}
    for r in records:
        first = seen.setdefault(r.id, r)
        if first is r:
            continue
        if first.source == r.source and first.prompt == r.prompt:
            raise SaesteerError(f"{r.source}/{r.id} is in {spec!r} twice; list each dataset once")
        raise SaesteerError(f"two prompts in {spec!r} have the id {r.id!r} (from {first.source} and {r.source}); "
                            "rename one of the files (its name prefixes its rows' ids) or give its rows other ids")


SPLITS = ("train", "test")
"""`NAME@train` / `NAME@test`: a fixed half of any dataset, chosen by a hash of each record's id,
so a search fits on one half and reports on the other without a list of ids to carry around."""


def in_split(record: Record, split: str) -> bool:
    digest = hashlib.sha1(f"{record.source}/{record.id}".encode()).digest()
    return (digest[0] % 2 == 0) == (split == "train")


def _load_one(spec: str) -> list[Record]:
    base, at, split = spec.rpartition("@")
    if at and split in SPLITS and base:
        return [r for r in _load_one(base) if in_split(r, split)]
    if at and base and not Path(spec).expanduser().exists() and "/" not in split:
        raise SaesteerError(f"unknown split @{split} in {spec!r}; use @{' or @'.join(SPLITS)}")
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
    if subset and name in NO_SUBSETS:
        raise SaesteerError(f"{name} has no subsets, so {spec!r} names nothing; use {name} (or {name}@train / "
                            f"{name}@test for a fixed half)")
    return loader(subset or None)
