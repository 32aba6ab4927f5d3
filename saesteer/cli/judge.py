"""`saesteer judge`: label (prompt, response) pairs as refusal or not, or refit the classifier."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import app, say, setup
from saesteer.errors import SaesteerError


@app.command()
def judge(
    input: Annotated[Optional[Path], typer.Option("--input", help="JSON lines with 'prompt' and 'response'.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="JSON lines out, one per input row (resumed if it exists); with --train, the weights file.")] = None,
    judge_name: Annotated[str, typer.Option("--judge", help="auto (default; offline: the phrase tier or the classifier), phrase, combined, classifier, llm, or hf:<model path or alias>.")] = "auto",
    endpoint: Annotated[Optional[str], typer.Option(help="llm judge: OpenAI-compatible base URL, e.g. http://localhost:8000/v1.")] = None,
    model: Annotated[Optional[str], typer.Option(help="llm judge: model name, e.g. allenai/wildguard or gpt-4o.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="llm judge: environment variable holding the API key.")] = None,
    prompt_style: Annotated[Optional[str], typer.Option(help="llm/hf judge: wildguard or xstest (default: wildguard for WildGuard models, else xstest).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="classifier judge: weights file (default: the shipped one).")] = None,
    train: Annotated[Optional[list[Path]], typer.Option(help="Refit the classifier on labelled files (jsonl or XSTest csv; repeatable) and write the weights to --out.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows judged (and saved) per step.")] = 32,
) -> None:
    """Judge (prompt, response) pairs for refusal; partial refusals count as refusals."""
    setup(None)
    if out is None:
        raise SaesteerError("--out is required")
    if out.is_dir():
        raise SaesteerError(f"--out {out} is a folder; give a file path, e.g. {out / 'judged.jsonl'}")
    if batch_size < 1:
        raise SaesteerError(f"--batch-size must be at least 1, got {batch_size}")
    if train:
        _train(train, out)
        return
    if input is None:
        raise SaesteerError("--input is required (JSON lines with 'prompt' and 'response')")
    from saesteer.judge import get_judge, judge_file, read_pairs

    read_pairs(input)  # a malformed input fails before any model or endpoint is touched
    options: dict = {}
    if judge_name == "llm":
        options = {"base_url": endpoint, "model": model, "api_key_env": api_key_env, "prompt_style": prompt_style}
    elif judge_name.startswith("hf:"):
        options = {"prompt_style": prompt_style}
        batch_size = min(batch_size, 8)
    elif judge_name == "classifier":
        options = {"weights": weights}
    elif endpoint or model or api_key_env or prompt_style:
        say(f"note: --endpoint/--model/--api-key-env/--prompt-style apply to the llm and hf judges, "
            f"not to {judge_name!r}")
    judge_obj = get_judge(judge_name, **options)
    from tqdm.auto import tqdm

    bar = None  # opened with the first row, so an --out that cannot be resumed is the only line printed

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="row", desc=f"judge {judge_obj.name}", leave=False)
        bar.update(done - bar.n)

    counts = judge_file(input, out, judge_obj, batch_size=batch_size, progress=progress)
    if bar is not None:
        bar.close()
    n = counts["judged"] + counts["skipped"]
    say(f"{counts['judged']} rows judged ({counts['skipped']} already in {out}) with {judge_obj.name}: "
        f"{counts['refusals']} refusals ({counts['partial']} partial) and {counts['broken']} broken answers "
        f"of the {counts['judged']} new rows; "
        f"{n} rows in {out}")


def _train(paths: list[Path], out: Path) -> None:
    from saesteer.judge import iter_labelled
    from saesteer.judge.classifier import save_weights, train_classifier

    rows: list[dict] = []
    for path in paths:
        if not path.is_file():
            raise SaesteerError(f"training file not found: {path}")
        if path.suffix == ".csv":
            import csv

            try:
                with open(path, newline="", encoding="utf-8") as f:
                    rows += list(csv.DictReader(f))
            except UnicodeDecodeError as e:
                raise SaesteerError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
        else:
            from saesteer.files import read_jsonl

            rows += read_jsonl(path)
    labelled = list(iter_labelled(rows))
    responses = [r for _, r, _, _ in labelled]
    labels = [y for _, _, y, _ in labelled]
    weights = train_classifier(responses, labels, prompts=[p for p, _, _, _ in labelled],
                               note="trained on " + ", ".join(os.path.basename(p) for p in paths))
    save_weights(out, weights)
    say(f"classifier fitted on {len(labels)} rows ({sum(labels)} refusals); weights in {out}; "
        f"use it with --judge classifier --weights {out}")
