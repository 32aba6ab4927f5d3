"""Merge hand labels with the answers they label into benchmarks/labels/<name>.jsonl.

    python benchmarks/judge_label_collect.py --answers runs/labelset/answers.jsonl \
        --labels runs/labelset/tolabel/labels1_A.jsonl:dev --labels runs/labelset/tolabel/labels1_B.jsonl:test \
        --out benchmarks/labels/smollm2_answers.jsonl

Each --labels file is one annotator's work, tagged with the split its rows belong to (`dev`
rows were read while writing the judge's patterns, `test` rows never). A row labelled by two
annotators keeps the label of the annotator whose split it belongs to (by the row's hash, as
judge_label_set.py split them), and the two labels are compared for inter-annotator agreement.
Prompts are not written: `dataset` + `id` find them again in the public datasets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

FIELDS = ("uid", "condition", "dataset", "id", "label", "response", "human_label", "family", "coherent",
          "labeller", "split")


def split_of(uid: str) -> str:
    return "dev" if int(hashlib.sha1(uid.encode()).hexdigest(), 16) % 2 == 0 else "test"


def read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", action="append", required=True)
    ap.add_argument("--labels", action="append", required=True, help="FILE:SPLIT")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", choices=("dev", "test"), help="put every row in this split (a model never read)")
    args = ap.parse_args()
    answers = {r["uid"]: r for path in args.answers for r in read(path)}
    by_uid: dict[str, list[tuple[str, dict]]] = {}
    for item in args.labels:
        path, _, split = item.rpartition(":")
        for r in read(path):
            by_uid.setdefault(r["uid"], []).append((split, r))
    rows, pairs = [], Counter()
    for uid, labels in by_uid.items():
        split = args.split or split_of(uid)
        chosen = next((r for s, r in labels if s == split), labels[0][1])
        if len(labels) == 2:
            (_, a), (_, b) = labels
            pairs["refusal"] += (a["human_label"] != "full_compliance") == (b["human_label"] != "full_compliance")
            pairs["coherent"] += a["coherent"] == b["coherent"]
            pairs["n"] += 1
        answer = answers[uid]
        rows.append({k: v for k, v in {**answer, **chosen, "split": split}.items() if k in FIELDS})
    rows.sort(key=lambda r: r["uid"])
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} labelled answers in {args.out}: " +
          ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["human_label"] for r in rows).items())) +
          f"; broken {sum(not r['coherent'] for r in rows)}")
    if pairs["n"]:
        print(f"inter-annotator agreement on {pairs['n']} doubly labelled answers: refusal {pairs['refusal']}/{pairs['n']}, "
              f"coherent {pairs['coherent']}/{pairs['n']}")


if __name__ == "__main__":
    main()
