"""`saesteer eval refusal`: refusal on unsafe prompts and over-refusal on safe ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, eval_app, say, setup
from saesteer.cli.core import (AblateOpt, AddOpt, ClampOpt, HookOpt, PositionsOpt, SaeOpt, ScaleOpt, SteerOpt,
                               steering_from_options)


@eval_app.command("refusal")
def refusal(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder (a rerun resumes it).")],
    dataset: Annotated[str, typer.Option(help="Comma-separated datasets with safe/unsafe labels.")] = "bundled",
    limit: Annotated[Optional[int], typer.Option(help="At most N prompts per dataset (seeded sample).")] = None,
    steer: SteerOpt = None,
    sae: SaeOpt = None,
    hook: HookOpt = None,
    clamp: ClampOpt = [],  # noqa: B006
    add: AddOpt = [],  # noqa: B006
    scale: ScaleOpt = [],  # noqa: B006
    ablate: AblateOpt = [],  # noqa: B006
    positions: PositionsOpt = "all",
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    batch_size: Annotated[int, typer.Option()] = 16,
    early_stop: Annotated[bool, typer.Option(help="Stop a row once the judge's verdict is certain.")] = True,
    judge: Annotated[str, typer.Option(help="Refusal judge (see saesteer judge --help).")] = "auto",
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate greedy answers, judge them, and write responses.jsonl + summary.json."""
    setup(data_dir)
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from saesteer.models import load_model

    spec = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, positions)
    config = RefusalEvalConfig(datasets=dataset, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               early_stop=early_stop, judge=judge, system=system, seed=seed)
    lm = load_model(model, dtype=dtype, device=device)
    summary = evaluate_refusal(lm, out, config, spec)
    if summary:
        for key, name in (("unsafe_refusal", "refusal on unsafe prompts"), ("safe_over_refusal", "over-refusal on safe prompts")):
            s = summary.get(key)
            if s:
                say(f"{name}: {s['rate']:.1%} [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}] (n={s['n']})")
        say(f"wrote {Path(out) / 'responses.jsonl'} and {Path(out) / 'summary.json'}")
