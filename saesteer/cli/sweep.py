"""`saesteer sweep` (a grid of methods x strengths) and `saesteer report` (its HTML report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, app, numbers, say, setup


@app.command()
def sweep(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Sweep folder (reruns resume finished runs).")],
    discovery: Annotated[Optional[Path], typer.Option(help="A `saesteer discover` folder (SAE, best latent, detector).")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated: none, sae_clamp, conditional_sae_clamp, refusal_direction, caa.")] = "none,sae_clamp,conditional_sae_clamp,refusal_direction,caa",
    features: Annotated[Optional[str], typer.Option(help="Latents to clamp (default: discovery's best).")] = None,
    values: Annotated[Optional[str], typer.Option(help="Clamp values (default: 0.5, 1, 1.5 x discovery's best).")] = None,
    strengths: Annotated[str, typer.Option(help="Multiples of the dense directions.")] = "0.5,1,2",
    direction_layer: Annotated[Optional[int], typer.Option(help="Layer of the dense baselines (default: the SAE's).")] = None,
    condition_scope: Annotated[Optional[str], typer.Option(help="Conditional clamp's detector reads the whole prompt (discovery's choice) or only the last_turn (few-shot and earlier turns ignored).")] = None,
    spec: Annotated[Optional[list[Path]], typer.Option(help="A steering spec file evaluated as a grid point of its own (method `spec`), e.g. a search's best.yaml; repeatable.")] = None,
    dataset: Annotated[str, typer.Option(help="Refusal datasets (safe + unsafe labels).")] = "bundled",
    limit: Annotated[Optional[int], typer.Option(help="Prompts per refusal dataset.")] = None,
    tasks: Annotated[str, typer.Option(help="Capability tasks ('' for none): mmlu_gen, mmlu_ll, truthfulqa_mc1, "
                                            "truthfulqa_mc2, gsm8k, gsm8k_chat (public data: --data-dir or the hub), "
                                            "or bundled_mc, bundled_mc_ll, bundled_math (offline).")] = "mmlu_ll,truthfulqa_mc2",
    capability_limit: Annotated[Optional[int], typer.Option(help="Items per capability task.")] = 100,
    kl_dataset: Annotated[str, typer.Option(help="Safe prompts on whose unsteered answers each point's KL from the unsteered model is measured ('' for none).")] = "",
    kl_limit: Annotated[Optional[int], typer.Option(help="Prompts for the KL measure.")] = 24,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    harmful_train: Annotated[Optional[str], typer.Option(help="Prompts for the dense directions (default depends on the data dir).")] = None,
    harmless_train: Annotated[Optional[str], typer.Option()] = None,
    judge: Annotated[str, typer.Option()] = "auto",
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a grid of steering methods and strengths into one tidy results table.

    With `none` in --methods, a gated point generates only the refusal prompts its gate flags
    and takes the unsteered run's answers for the rest (they are the same answers)."""
    setup(data_dir)
    from saesteer.data import data_dir as current_data_dir
    from saesteer.evaluate.sweep import SweepConfig, run_sweep
    from saesteer.models import load_model

    local = current_data_dir() is not None
    config = SweepConfig(
        discovery=str(discovery) if discovery else None, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        features=numbers(features, "--features", int, "latent indices like 12,77"), clamp_values=numbers(values, "--values"),
        direction_strengths=numbers(strengths, "--strengths"), direction_layer=direction_layer,
        condition_scope=condition_scope, specs=tuple(str(p) for p in spec or ()), refusal_datasets=dataset, refusal_limit=limit, capability_tasks=tasks, capability_limit=capability_limit,
        max_new_tokens=max_new_tokens, kl_datasets=kl_dataset, kl_limit=kl_limit, judge=judge, seed=seed,
        harmful_train=harmful_train or ("harmful_train" if local else "bundled:harmful"),
        harmless_train=harmless_train or ("harmless_train" if local else "bundled:harmless"))
    lm = load_model(model, dtype=dtype, device=device)
    rows = run_sweep(lm, out, config)
    say(f"{len(rows)} result rows in {Path(out) / 'results.csv'}; next: saesteer report {out}")


@app.command()
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A `saesteer sweep` folder.")],
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: SWEEP_DIR/report).")] = None,
) -> None:
    """Write the HTML report of a sweep, its PNG plots and Markdown tables (tables.md)."""
    from saesteer.report import build_report

    path = build_report(sweep_dir, out)
    say(f"report: {path}")
