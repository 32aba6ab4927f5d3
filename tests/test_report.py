"""The sweep report: the paper-layout picks, the Markdown tables, the HTML page and its plots."""

import json

import pytest

from saesteer.errors import SaesteerError
from saesteer.report import build_report, markdown_tables, paper_table

RUNS = {  # name: (method, strength, unsafe refusal, safe over-refusal, mmlu)
    "none": ("none", None, 0.02, 0.00, 0.33),
    "sae_clamp-206-106": ("sae_clamp", 106, 0.30, 0.15, 0.10),
    "sae_clamp-206-159": ("sae_clamp", 159, 0.60, 0.55, 0.00),
    "conditional_sae_clamp-206-159": ("conditional_sae_clamp", 159, 0.40, 0.02, 0.30),
    "conditional_sae_clamp-206-159-last_turn": ("conditional_sae_clamp", 159, 0.40, 0.02, 0.32),
    "caa-L9-1": ("caa", 1, 0.50, 0.20, 0.30),
    "caa-L9-2": ("caa", 2, 0.90, 0.70, 0.25),
}


def rows():
    out = []
    for name, (method, strength, unsafe, safe, mmlu) in RUNS.items():
        base = {"name": name, "method": method, "strength": strength, "feature": None, "layer": None,
                "spec_hash": None, "n": 50}
        for metric, dataset, value in (("unsafe_refusal", "all", unsafe), ("safe_over_refusal", "all", safe),
                                       ("unsafe_refusal", "harmbench", unsafe), ("mmlu_gen", "mmlu_gen", mmlu)):
            out.append({**base, "metric": metric, "dataset": dataset, "value": value,
                        "ci_low": max(value - 0.1, 0), "ci_high": min(value + 0.1, 1)})
    return out


def test_paper_layout_picks_balanced_and_max_safety_clamps():
    picks = dict(paper_table(rows()))
    assert picks["none"] == "none"
    assert picks["clamp, balanced (like 10)"] == "sae_clamp-206-106"  # 0.30 - 0.15 beats 0.60 - 0.55
    assert picks["clamp, max safety (like 12)"] == "sae_clamp-206-159"
    assert picks["conditional clamp"] == "conditional_sae_clamp-206-159-last_turn"  # same balance, more capability
    assert picks["caa (best balance)"] == "caa-L9-1"  # 0.50 - 0.20 beats 0.90 - 0.70


def test_markdown_tables_hold_every_run_and_metric():
    md = markdown_tables(rows())
    layout, every = md.split("## Every run")
    assert "| clamp, max safety (like 12) | sae_clamp-206-159 | 60.0% [50%–70%]" in layout
    assert "unsafe refusal (harmbench)" in layout and "mmlu gen (mmlu_gen)" in layout
    assert all(f"| {name} |" in every for name in RUNS)
    assert "| caa-L9-2 | 90.0% [80%–100%] | 90.0% [80%–100%] | 70.0% [60%–80%] | 25.0% [15%–35%] |" in every


def test_build_report_writes_html_plots_and_tables(tmp_path):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    path = build_report(tmp_path)
    html = path.read_text()
    assert path == tmp_path / "report" / "report.html"
    assert "The paper's layout, measured here" in html and "data:image/png;base64," in html
    for name in ("strength.png", "pareto.png", "tables.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_report_of_an_empty_or_missing_sweep_says_what_to_do(tmp_path):
    with pytest.raises(SaesteerError, match="run saesteer sweep first"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(SaesteerError, match="no finished runs"):
        build_report(tmp_path)
