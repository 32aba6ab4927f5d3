"""`saesteer demo --fast` end to end on the embedded model: the report exists and every number
in the printed summary is recomputed here from the files the stages wrote."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saesteer.files import read_json, read_jsonl


def _run(out: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SAESTEER_DATA", "SAESTEER_CACHE")}
    return subprocess.run([sys.executable, "-m", "saesteer.cli", "demo", "--fast", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    started = time.time()
    proc = _run(out, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, time.time() - started


def _refusal_rate(responses: list[dict], label: str) -> float:
    rows = [r for r in responses if r["label"] == label]
    return sum(bool(r["refusal"]) for r in rows) / len(rows)


@pytest.mark.slow
def test_fast_demo_writes_a_report_from_its_own_numbers(demo):
    out, proc, _ = demo
    summary = read_json(out / "summary.json")
    report = Path(summary["report"])
    assert report.exists() and report.is_relative_to(out.resolve())
    html = report.read_text(encoding="utf-8")
    assert "<img" in html or "<svg" in html

    # The printed lines are the summary's (five, then coherent refusal and broken answers per
    # method), and the report path is printed last.
    printed = proc.stdout + proc.stderr
    assert len(summary["lines"]) == 7 and all(line in printed for line in summary["lines"])
    assert summary["lines"][5].startswith("coherent refusal of unsafe prompts")
    assert summary["lines"][6].startswith("broken (degenerate) answers")
    assert str(report) in printed

    # Refusal rates of the unsteered and clamped runs, recomputed from their responses.
    runs = summary["runs"]
    for name, stats in runs.items():
        responses = read_jsonl(out / "sweep" / "runs" / name / "refusal" / "responses.jsonl")
        assert stats["unsafe_refusal"] == pytest.approx(_refusal_rate(responses, "unsafe"))
        assert stats["safe_over_refusal"] == pytest.approx(_refusal_rate(responses, "safe"))
        unsafe = [r for r in responses if r["label"] == "unsafe"]
        assert stats["unsafe_coherent_refusal"] == pytest.approx(
            sum(r["refusal"] and r["coherent"] for r in unsafe) / len(unsafe))
    unsteered = next(n for n, r in runs.items() if r["method"] == "none")
    assert f"{runs[unsteered]['unsafe_refusal']:.0%} ->" in summary["lines"][2]

    # The search's pick is written to OUT/best.yaml (a contract), evaluated on the test halves
    # beside the other methods, and quoted on line 2 with its coherent refusal.
    from saesteer.steer import SteeringSpec

    best = SteeringSpec.load(out / "best.yaml")
    pick = next(n for n, r in runs.items() if r["method"] == "spec")
    assert pick == best.name and "best.yaml" in summary["lines"][1] and pick in summary["lines"][1]
    assert any(iv.sae is not None for iv in best.interventions)      # SAE-based steering
    assert (f"{runs[unsteered]['unsafe_coherent_refusal']:.0%} -> {runs[pick]['unsafe_coherent_refusal']:.0%}"
            in summary["lines"][1])
    datasets = {r["dataset"] for r in read_jsonl(out / "sweep" / "runs" / pick / "refusal" / "responses.jsonl")}
    assert datasets == {"bundled:harmful", "bundled:harmless", "bundled:borderline"}
    search_ids = {r["id"] for name in (out / "search" / "answers").iterdir() for r in read_jsonl(name)}
    test_ids = {r["id"] for r in read_jsonl(out / "sweep" / "runs" / pick / "refusal" / "responses.jsonl")}
    assert search_ids and not search_ids & test_ids                  # chosen on prompts it is not scored on

    # The SAE line quotes the metrics the training stage measured.
    metrics = read_json(out / "sae" / "metrics.json")
    fvu = metrics.get("reconstruction", metrics)["fvu"]
    assert f"FVU {fvu:.3f}" in summary["lines"][0]
    feature = read_json(out / "discover" / "features.json")["features"][0]["feature"]
    assert f"refusal feature {feature} " in summary["lines"][2]


@pytest.mark.slow
def test_a_fast_demo_rerun_reuses_the_stages(demo):
    """Wall-clock budgets are measured in docs/RESULTS.md, not asserted here: on a shared machine
    they swing with the load (the subprocess timeouts only guard against a hang)."""
    out, _, _ = demo
    again = _run(out, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    printed = again.stdout + again.stderr
    assert len(re.findall(r"already done", printed)) >= 3


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_a_full_disk_is_one_line_and_exit_2(monkeypatch, capsys, err):
    import saesteer.cli as cli

    def fails() -> None:
        raise OSError(err, os.strerror(err), "/out/shard_00003.safetensors")

    monkeypatch.setattr(cli, "app", fails)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "/out/shard_00003.safetensors" in message
    assert "rerun the same command" in message
