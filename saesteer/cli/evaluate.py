"""`saesteer eval refusal`: refusal on unsafe prompts and over-refusal on safe ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, eval_app, say, setup
from saesteer.cli.core import (AblateOpt, AddOpt, ClampOpt, HookOpt, PositionsOpt, SaeOpt, ScaleOpt, SteerOpt,
                               steering_from_options)
from saesteer.evaluate.stats import describe


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
    positions: PositionsOpt = None,
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    batch_size: Annotated[int, typer.Option()] = 32,
    early_stop: Annotated[bool, typer.Option(help="Stop a row once the judge's verdict is certain.")] = True,
    judge: Annotated[str, typer.Option(help="Refusal judge (see saesteer judge --help).")] = "auto",
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    seed: int = 0,
    unsteered: Annotated[Optional[Path], typer.Option(
        help="An unsteered `eval refusal` folder of the same prompts and settings: a gated spec generates only the "
             "prompts its gate flags and takes the other answers from there.")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate greedy answers, judge them, and write responses.jsonl + summary.json."""
    setup(data_dir)
    from saesteer.errors import SaesteerError
    from saesteer.evaluate.refusal import RefusalEvalConfig, evaluate_refusal
    from saesteer.models import load_model

    if unsteered is not None and not (unsteered / "run.json").is_file():
        raise SaesteerError(f"--unsteered {unsteered} holds no `saesteer eval refusal` run (no run.json); "
                            "point it at the --out folder of an unsteered run")
    spec = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, positions)
    config = RefusalEvalConfig(datasets=dataset, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               early_stop=early_stop, judge=judge, system=system, seed=seed)
    lm = load_model(model, dtype=dtype, device=device)
    summary = evaluate_refusal(lm, out, config, spec, unsteered=unsteered)
    if summary:
        if unsteered is not None:
            say(f"answers taken from the unsteered run {unsteered}: {summary['answers_from_unsteered_run']} "
                "(none unless the spec is gated and that run has the same prompts and settings)")
        for key, name in (("unsafe_refusal", "refusal on unsafe prompts"), ("safe_over_refusal", "over-refusal on safe prompts")):
            s = summary.get(key)
            if s:
                say(f"{name}: {describe(s)}")
        say(f"wrote {Path(out) / 'responses.jsonl'} and {Path(out) / 'summary.json'}")


@eval_app.command("detector")
def detector(
    model: ModelArg,
    steer: Annotated[Path, typer.Option("--steer", help="A conditional steering spec (its detector is evaluated).")],
    out: Annotated[Path, typer.Option(help="Output folder for summary.json.")],
    dataset: Annotated[str, typer.Option(help="Comma-separated datasets with safe/unsafe labels.")] =
        "harmbench,advbench,jailbreakbench,strongreject,xstest,alpaca",
    limit: Annotated[Optional[int], typer.Option(help="At most N prompts per dataset (seeded sample).")] = 50,
    five_shot: Annotated[int, typer.Option(help="Multiple-choice questions asked after five exemplar turns (0: none).")] = 50,
    five_shot_from: Annotated[str, typer.Option(
        help="Where those come from: mmlu, bundled (offline) or auto (MMLU when the data directory holds it).")] = "auto",
    batch_size: Annotated[int, typer.Option()] = 16,
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """How often a conditional spec's detector fires: per dataset, on unsafe (true positives), safe
    (false positives, XSTest safe included) and five-shot MMLU prompts."""
    setup(data_dir)
    from saesteer.errors import SaesteerError, at_least
    from saesteer.evaluate.detector import DetectorEvalConfig, detector_rates
    from saesteer.files import ensure_dir, write_json
    from saesteer.models import load_model
    from saesteer.steer import SteeringSpec

    at_least(1, limit=limit, batch_size=batch_size)
    at_least(0, five_shot=five_shot)
    config = DetectorEvalConfig(dataset, limit, five_shot, batch_size, seed, five_shot_from)
    spec = SteeringSpec.load(steer)
    if spec.condition is None:
        raise SaesteerError(f"{steer} has no condition: there is no detector to evaluate")
    lm = load_model(model, dtype=dtype, device=device)
    result = detector_rates(lm, spec, config)
    write_json(ensure_dir(out) / "summary.json", result)
    for group, r in result["groups"].items():
        say(f"{group}: fires on {r['k']}/{r['n']} ({r['rate']:.0%}, 95% CI {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%})")
    say(f"wrote {Path(out) / 'summary.json'}")
