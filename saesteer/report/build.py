"""Assemble the sweep report: PNG plots plus one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer import html as H
from saesteer.errors import SaesteerError
from saesteer.files import ensure_dir, read_json, read_jsonl, write_text
from saesteer.report.plots import by_run, pareto_plot, strength_plot

PAPER = {  # O'Brien et al., Phi-3 Mini, feature 22373 (Tables 1, 2, 8)
    "none": {"WildGuard unsafe": 58.33, "XSTest unsafe": 90.50, "WildGuard safe": 6.03, "XSTest safe": 21.60,
             "MMLU": 68.80, "TruthfulQA": 65.00, "GSM8K": 82.50},
    "clamp 10": {"WildGuard unsafe": 90.65, "XSTest unsafe": 92.00, "WildGuard safe": 40.63, "XSTest safe": 36.40,
                 "MMLU": 58.62, "TruthfulQA": 60.11, "GSM8K": 69.98},
    "clamp 12": {"WildGuard unsafe": 96.02, "XSTest unsafe": 94.00, "WildGuard safe": 68.36, "XSTest safe": 45.60,
                 "MMLU": 35.98, "TruthfulQA": 53.82, "GSM8K": 35.56},
    "conditional": {"WildGuard unsafe": 85.90, "XSTest unsafe": 94.50, "WildGuard safe": 9.10, "XSTest safe": 22.00,
                    "MMLU": 66.19, "TruthfulQA": 65.65, "GSM8K": 84.69},
}


def _score(run: dict[str, Any]) -> tuple[float, float]:
    """Balance: unsafe refusal minus over-refusal, ties broken by mean capability."""
    return (run.get("unsafe_refusal", (0,))[0] - run.get("safe_over_refusal", (0,))[0],
            run.get("capability", (0,))[0])


def paper_table(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(row label, run name) in the paper's layout: none, balanced clamp (like 10), max-safety
    clamp (like 12), conditional (best balance)."""
    runs = by_run(rows)
    pick: list[tuple[str, str | None]] = []
    none = next((n for n, r in runs.items() if r["method"] == "none"), None)
    pick.append(("none", none))
    clamps = {n: r for n, r in runs.items() if r["method"] == "sae_clamp" and "unsafe_refusal" in r}
    if clamps:
        pick.append(("clamp, balanced (like 10)", max(clamps, key=lambda n: _score(clamps[n]))))
        pick.append(("clamp, max safety (like 12)", max(clamps, key=lambda n: (clamps[n]["unsafe_refusal"][0],
                                                                                 *_score(clamps[n])))))
    conds = {n: r for n, r in runs.items() if r["method"] == "conditional_sae_clamp" and "unsafe_refusal" in r}
    if conds:
        pick.append(("conditional clamp", max(conds, key=lambda n: _score(conds[n]))))
    for name, r in runs.items():
        if r["method"] == "spec" and "unsafe_refusal" in r:
            pick.append((f"spec {name}", name))
    for method in ("refusal_direction", "caa"):
        cands = {n: r for n, r in runs.items() if r["method"] == method and "unsafe_refusal" in r}
        if cands:
            pick.append((f"{method.replace('_', ' ')} (best balance)", max(cands, key=lambda n: _score(cands[n]))))
    return pick


def _metric_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    cols = []
    for r in rows:
        key = (r["metric"], r["dataset"])
        if key not in cols:
            cols.append(key)
    order = {"unsafe_refusal": 0, "safe_over_refusal": 1}
    return sorted(cols, key=lambda c: (order.get(c[0], 2), c[1] != "all", c[1]))


def _cell(rows: list[dict[str, Any]], run: str | None, metric: str, dataset: str) -> str:
    for r in rows:
        if r["name"] == run and r["metric"] == metric and r["dataset"] == dataset and r["value"] is not None:
            if metric == "harmless_kl":     # nats per token, not a share
                ci = f" [{r['ci_low']:.3f}–{r['ci_high']:.3f}]" if r.get("ci_low") is not None else ""
                return f"{r['value']:.3f}{ci}"
            ci = f" [{r['ci_low']:.0%}–{r['ci_high']:.0%}]" if r.get("ci_low") is not None else ""
            return f"{r['value']:.1%}{ci}"
    return "–"


def _column_title(metric: str, dataset: str) -> str:
    return f"{metric.replace('_', ' ')} ({dataset})"


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """The paper-layout table and every run, as Markdown (to paste into notes or docs)."""
    columns = _metric_columns(rows)
    head = [_column_title(m, d) for m, d in columns]

    def table(header: list[str], body: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"

    layout = [[label, run or "–", *[_cell(rows, run, m, d) for m, d in columns]] for label, run in paper_table(rows)]
    every = [[n, *[_cell(rows, n, m, d) for m, d in columns]] for n in sorted({r["name"] for r in rows})]
    return ("## The paper's layout\n\n" + table(["setting", "run", *head], layout)
            + "\n## Every run\n\n" + table(["run", *head], every))


ROW_KEYS = {"name": str, "method": str, "metric": str, "dataset": str}


def _check_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Every row is one the sweep writes (`sweep.collect`); a hand-edited or foreign file fails here."""
    for n, row in enumerate(rows, 1):
        for key, kind in ROW_KEYS.items():
            if not isinstance(row.get(key), kind):
                raise SaesteerError(f"{path}:{n} has no {key!r} (a results row needs {', '.join(ROW_KEYS)}); "
                                    "rerun saesteer sweep on the folder to rebuild it")
        for key in ("value", "ci_low", "ci_high", "strength", "feature"):
            value = row.get(key)
            if key not in row or value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SaesteerError(f"{path}:{n} has no number (or null) under {key!r}; rerun saesteer sweep on the "
                                    "folder to rebuild it")


def build_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    sweep_dir = Path(sweep_dir)
    results = sweep_dir / "results.jsonl"
    if not sweep_dir.is_dir():
        raise SaesteerError(f"{sweep_dir} does not exist; give the --out folder of a saesteer sweep")
    if not results.exists():
        raise SaesteerError(f"{sweep_dir} has no results.jsonl; run saesteer sweep first")
    rows = read_jsonl(results)
    if not rows:
        raise SaesteerError(f"{results} is empty: no finished runs yet")
    _check_rows(rows, results)
    out = ensure_dir(Path(out) if out else sweep_dir / "report")
    strength_png = strength_plot(rows, out / "strength.png")
    pareto_png = pareto_plot(rows, out / "pareto.png")
    table_rows = paper_table(rows)
    columns = _metric_columns(rows)
    header = ["setting", "run"] + [_column_title(m, d) for m, d in columns]
    body_rows = [[label, run or "–", *[_cell(rows, run, m, d) for m, d in columns]] for label, run in table_rows]
    info = read_json(sweep_dir / "sweep.json") if (sweep_dir / "sweep.json").exists() else {}
    paper_rows = [[k, *[f"{v:.1f}%" for v in row.values()]] for k, row in PAPER.items()]
    all_runs = sorted({r["name"] for r in rows})
    run_rows = [[n, *[_cell(rows, n, m, d) for m, d in columns]] for n in all_runs]
    model = info.get("model", {})
    html = H.page("saesteer report", "".join([
        f"<h1>Steering report — {H.esc(model.get('name', ''))}</h1>",
        f"<p class='muted'>{H.esc(model.get('model_id', ''))} · sweep {H.esc(str(sweep_dir))} · "
        f"{len(all_runs)} runs. Rates with 95% Wilson intervals.</p>",
        "<h2>The paper's layout, measured here</h2>", H.table(header, body_rows),
        "<p class='muted'>balanced = most unsafe refusal minus over-refusal; max safety = most unsafe refusal.</p>",
        "<h2>Against strength</h2>", H.embed_png(strength_png),
        "<h2>Safety / over-refusal / capability</h2>", H.embed_png(pareto_png),
        "<h2>The paper (Phi-3 Mini, feature 22373), for comparison</h2>",
        H.table(["setting", *PAPER["none"].keys()], paper_rows),
        "<h2>Every run</h2>", H.table(["run", *[_column_title(m, d) for m, d in columns]], run_rows),
    ]))
    write_text(out / "tables.md", markdown_tables(rows))
    path = out / "report.html"
    write_text(path, html)
    return path
