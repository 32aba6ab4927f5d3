"""Shared pieces of the CLI: the app objects, common options and set-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Steer a chat model's refusal with sparse-autoencoder features, and measure the cost.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate refusal, multi-turn attacks, capability or an SAE.")
app.add_typer(eval_app, name="eval")

ModelArg = Annotated[str, typer.Argument(help="Alias (smollm2, gemma3-270m), hub id, local folder or .gguf file.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Local data folder (like shared/data); default $SAESTEER_DATA, else the hub.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16.")]


def setup(data_dir: Path | None = None) -> None:
    """Quiet third-party progress output and apply --data-dir."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if data_dir is not None:
        from saesteer.data import set_data_dir

        set_data_dir(data_dir)


def say(message: str) -> None:
    """Status output goes to stderr, so stdout carries only results."""
    typer.echo(message, err=True)


def not_built(stage: str, help_text: str, parent: typer.Typer = app) -> None:
    """Register a placeholder for a stage that does not exist yet: it says so and exits 1."""

    def command(ctx: typer.Context) -> None:
        say(f"saesteer {stage}: this stage is not built yet")
        raise typer.Exit(1)

    parent.command(name=stage, help=help_text + " (not built yet)", context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})(command)


def numbers(text: str | None, option: str, kind: type = float, example: str = "numbers") -> tuple:
    """A comma-separated option as a tuple of `kind`; a bad entry is a one-line error."""
    from saesteer.errors import SaesteerError

    if not text:
        return ()
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError as e:
        raise SaesteerError(f"{option} expects comma-separated {example}, got {text!r}") from e
