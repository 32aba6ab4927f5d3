"""`saesteer demo`: the whole paper in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, app, say, setup


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder (rerun to resume or to rebuild the report).")] = Path("saesteer-demo"),
    fast: Annotated[bool, typer.Option("--fast", help="A smoke run of a few minutes (what CI runs).")] = False,
    full: Annotated[bool, typer.Option("--full", help="The paper's protocol at full size on the public datasets (from --data-dir, else the hub; meant for a GPU).")] = False,
    model: Annotated[str, typer.Option(help="Model (alias, hub id, folder or GGUF).")] = "smollm2",
    layer: Annotated[Optional[int], typer.Option(help="Block whose output the SAE reads.")] = None,
    sae: Annotated[Optional[Path], typer.Option(help="Use this SAE (SAELens/sparsify folder) instead of training one.")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Harvest, train an SAE, discover refusal features, steer, evaluate, report — offline."""
    setup(data_dir)
    from saesteer.demo import DemoConfig, preset, run_demo
    from saesteer.errors import SaesteerError

    if fast and full:
        raise SaesteerError("choose --fast or --full, not both")
    config = preset("fast" if fast else "full" if full else "default", DemoConfig(out=out, model=model, device=device))
    if layer is not None:
        config.layer = layer
    if sae is not None:
        config.sae = sae
    run_demo(config, say=say)
