"""files.py: resuming JSON lines without losing rows, and cleaning up after killed atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.files import JsonlAppender, atomic_path, read_jsonl, remove_orphaned_tmp, write_json

ROWS = [{"id": i, "text": t} for i, t in enumerate(["plain", "line\u2028separator", "next\x85line", "é ü 中"])]


def write_rows(path: Path, rows: list[dict], *, final_newline: bool = True) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text if final_newline else text[:-1], encoding="utf-8")


# --- resuming JSON lines -----------------------------------------------------------------------------

def test_a_complete_last_row_without_its_newline_is_kept_and_given_its_newline(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_rows(path, ROWS, final_newline=False)
    assert read_jsonl(path, tolerate_torn_tail=True) == ROWS  # counted as done by a resume...
    with JsonlAppender(path) as w:                            # ...so the appender must keep it
        w.write({"id": 9, "text": "after"})
    assert read_jsonl(path) == ROWS + [{"id": 9, "text": "after"}]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == len(ROWS) + 1


@pytest.mark.parametrize("tail", [b'{"id": 4, "te', b"{", b"   ", '{"id": 4, "text": "\u00e9'.encode()[:-1]])
def test_a_torn_last_line_is_dropped_by_the_reader_and_cut_by_the_appender(tmp_path, tail):
    path = tmp_path / "rows.jsonl"
    write_rows(path, ROWS)
    with open(path, "ab") as f:
        f.write(tail)  # the last: a character cut in half
    assert read_jsonl(path, tolerate_torn_tail=True) == ROWS
    if tail.strip():
        with pytest.raises(SaesteerError):
            read_jsonl(path)
    JsonlAppender(path).close()
    assert read_jsonl(path) == ROWS and path.read_bytes().endswith(b"\n")


def test_only_an_unterminated_line_is_a_torn_tail(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n")  # a bad line with its newline is damage, not a tear
    with pytest.raises(SaesteerError, match=":2 is not valid JSON"):
        read_jsonl(path, tolerate_torn_tail=True)
    path.write_text("")
    JsonlAppender(path).close()
    assert path.read_bytes() == b""


def test_refusal_eval_resume_keeps_a_last_row_without_its_newline(tmp_path):
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from tests.tiny import tiny_model

    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, [{"id": f"p{i}", "prompt": p, "label": "safe"} for i, p in enumerate(
        ["Hi", "Write a poem about the sea", "Explain photosynthesis", "The quick brown fox"])])
    lm = tiny_model("llama")
    config = RefusalEvalConfig(datasets=str(prompts), max_new_tokens=4, batch_size=2, judge="phrase", chunk=2)
    out = tmp_path / "eval"
    evaluate_refusal(lm, out, config, progress=False)
    path = out / "responses.jsonl"
    full = read_jsonl(path)
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    path.write_text("\n".join(lines[:3]), encoding="utf-8")  # three rows, the third without its newline
    summary = evaluate_refusal(lm, out, config, progress=False)
    assert read_jsonl(path) == full and summary["safe_over_refusal"]["n"] == 4
    assert path.read_text(encoding="utf-8").split("\n") == lines + [""]


def test_judge_out_resume_keeps_a_last_row_without_its_newline(tmp_path):
    from typer.testing import CliRunner

    from saesteer.cli import app

    pairs = [{"prompt": f"question {i}", "response": r, "id": i} for i, r in enumerate(
        ["Sure, here it is.", "I'm sorry, but I can't help with that.", "Here you go:", "I cannot do that."])]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, pairs)
    runner = CliRunner()
    assert runner.invoke(app, ["judge", "--input", str(inp), "--out", str(out), "--judge", "phrase"]).exit_code == 0
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == 4
    out.write_text("\n".join(lines[:2]), encoding="utf-8")  # two rows, the second without its newline
    r = runner.invoke(app, ["judge", "--input", str(inp), "--out", str(out), "--judge", "phrase"])
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8").split("\n") == lines + [""]


# --- temporary files of killed atomic writes ---------------------------------------------------------

def age(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_a_rerun_removes_the_temporary_file_a_killed_write_left(tmp_path):
    target = tmp_path / "shard_00003.safetensors"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from saesteer.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 100_000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(target)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    orphans = list(tmp_path.glob(".shard_00003.safetensors.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    age(orphans[0], 60)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_cleanup_touches_only_orphans_of_the_same_target(tmp_path):
    target = tmp_path / "run.json"
    orphan = tmp_path / ".run.json.abcd_123.tmp"
    orphan.write_text("left by a killed writer")
    age(orphan, 60)
    young = tmp_path / ".run.json.young123.tmp"
    young.write_text("a writer that may not hold its lock yet")
    keep = {
        ".run.json.notours.tmp": "not tempfile's 8-character name",
        ".summary.json.abcd1234.tmp": "another target's",
        "run.json.abcd1234.tmp": "no leading dot",
        ".run.json.ABCD1234.tmp": "tempfile names are lower case",
        ".run.json.abcd1234.tmp.bak": "another suffix",
    }
    for name, text in keep.items():
        (tmp_path / name).write_text(text)
        age(tmp_path / name, 7200)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("a symlink's target")
    (tmp_path / ".run.json.link1234.tmp").symlink_to(outside)
    (tmp_path / ".run.json.dir12345.tmp").mkdir()

    write_json(target, {"ok": True})
    names = {p.name for p in tmp_path.iterdir()}
    assert orphan.name not in names and young.name in names
    assert set(keep) | {".run.json.link1234.tmp", ".run.json.dir12345.tmp", "elsewhere.txt", "run.json"} <= names
    assert outside.read_text() == "a symlink's target"


@pytest.mark.skipif(sys.platform == "win32", reason="file locks")
def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    inside, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"slow")
                inside.set()
                finish.wait(30)
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert inside.wait(30)
    (live,) = tmp_path.glob(".checkpoint.pt.*.tmp")
    age(live, 7200)  # old, but its writer still holds the lock
    assert remove_orphaned_tmp(target) == 0
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"fast")
    assert live.exists()
    finish.set()
    thread.join(30)
    assert not errors and target.read_bytes() == b"slow"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_atomically_written_file_gets_the_mode_of_any_new_file(tmp_path):
    """mkstemp makes owner-only files; results on a shared machine must be readable like the rest."""
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def test_json_files_are_strict_a_nan_is_written_as_null(tmp_path):
    """A rate of no trials or an undefined mean must not write NaN, which JSON parsers refuse."""
    import numpy as np

    from saesteer.evaluate.stats import describe, rate

    path = tmp_path / "s.json"
    write_json(path, {"rate": rate(0, 0), "mean": float("nan"), "inf": [float("inf"), 1.0],
                      "array": np.array([np.nan, 2.0])})
    loaded = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert loaded == {"rate": {"rate": None, "n": 0, "k": 0, "ci95": [0.0, 1.0]}, "mean": None,
                      "inf": [None, 1.0], "array": [None, 2.0]}
    assert describe(rate(0, 0)) == "n=0" and describe(rate(1, 4)).startswith("25.0% [")
