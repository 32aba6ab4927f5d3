"""Core stages: harvest activations and generate text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, app, say, setup

@app.command()
def harvest(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder (resumed if it holds a partial run).")],
    layer: Annotated[list[str], typer.Option(help="Layer index or module path; repeat for several layers in one pass.")],
    dataset: Annotated[str, typer.Option(help="corpus, corpus:<source>, any dataset name, or a file.")] = "corpus",
    max_tokens: Annotated[int, typer.Option(help="Tokens to keep per layer.")] = 1_000_000,
    context_length: Annotated[int, typer.Option()] = 512,
    batch_size: Annotated[int, typer.Option(help="Contexts per forward pass.")] = 8,
    store_dtype: Annotated[str, typer.Option("--dtype", help="float16, bfloat16 or float32 on disk.")] = "float16",
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    model_dtype: Annotated[str, typer.Option("--model-dtype")] = "auto",
) -> None:
    """Stream a corpus through the model and save the residual stream after LAYER as shards."""
    setup(data_dir)
    from saesteer.activations import HarvestConfig
    from saesteer.activations import harvest as run
    from saesteer.data.sources import data_dir as current_data_dir
    from saesteer.models import load_model

    if current_data_dir() is None and dataset not in ("bundled",) and not dataset.startswith(("bundled:", "hf:")) \
            and not Path(dataset).exists() and dataset.split(":")[0] in ("alpaca", "corpus"):
        say(f"note: no data directory set (SAESTEER_DATA); harvesting the bundled prompt sets instead of {dataset}")
        dataset = "bundled"
    lm = load_model(model, dtype=model_dtype, device=device)
    layers: list[int | str] = [int(x) if x.lstrip("-").isdigit() else x for x in layer]
    manifest = run(lm, out, HarvestConfig(layers=layers, dataset=dataset, max_tokens=max_tokens,
                                          context_length=context_length, batch_size=batch_size,
                                          dtype=store_dtype, seed=seed))
    say(f"{manifest.n_tokens:,} tokens x {len(manifest.hooks)} hook(s) in {out} "
         f"({manifest.tokens_per_second or 0:.0f} tokens/s)")


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    batch_size: int = 8,
    seed: int = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate answers (printed on stdout, one block per prompt)."""
    setup(None)
    from saesteer.generate import GenerationConfig
    from saesteer.generate import generate as run
    from saesteer.models import load_model

    lm = load_model(model, dtype=dtype, device=device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, system=system,
                              batch_size=batch_size, seed=seed)
    for gen in run(lm, prompt, config):
        typer.echo(gen.text)
