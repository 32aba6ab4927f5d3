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
    dataset: Annotated[str, typer.Option(help="corpus (needs a data dir), offline, corpus:<source>, any dataset name, or a file; join several with + (offline+answers.jsonl).")] = "corpus",
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

    layers: list[int | str] = [int(x) if x.lstrip("-").isdigit() else x for x in layer]
    config = HarvestConfig(layers=layers, dataset=dataset, max_tokens=max_tokens, context_length=context_length,
                           batch_size=batch_size, dtype=store_dtype, seed=seed)  # checked before any note
    if current_data_dir() is None and dataset.split(":")[0] in ("alpaca", "corpus"):
        from saesteer.data.corpus import corpus_documents
        from saesteer.errors import SaesteerError

        try:
            corpus_documents(dataset)
        except SaesteerError as e:
            say(f"note: {dataset} is not available here ({e}); harvesting the offline corpus instead "
                "(bundled prompt sets + Python's reference docs). Set SAESTEER_DATA for the real data.")
            config.dataset = "offline"
    lm = load_model(model, dtype=model_dtype, device=device)
    manifest = run(lm, out, config)
    say(f"{manifest.n_tokens:,} tokens x {len(manifest.hooks)} hook(s) in {out} "
         f"({manifest.tokens_per_second or 0:.0f} tokens/s)")


def parse_edits(clamp: list[str], add: list[str], scale: list[str], ablate: list[str]) -> list:
    """`--clamp 1234=12 --ablate 77` → FeatureEdits."""
    from saesteer.errors import SaesteerError
    from saesteer.steer import FeatureEdit

    edits = []
    for op, items in (("clamp", clamp), ("add", add), ("scale", scale)):
        for item in items:
            feature, sep, value = item.partition("=")
            try:
                edits.append(FeatureEdit(int(feature), op, float(value)))  # type: ignore[arg-type]
            except ValueError as e:
                raise SaesteerError(f"--{op} expects FEATURE=VALUE (e.g. --{op} 1234=12), got {item!r}") from e
    for item in ablate:
        try:
            edits.append(FeatureEdit(int(item), "ablate"))
        except ValueError as e:
            raise SaesteerError(f"--ablate expects a feature id, got {item!r}") from e
    return edits


def inline_spec(sae: Path | None, hook: str | None, clamp: list[str], add: list[str], scale: list[str],
                ablate: list[str], positions: str):
    """A steering spec from the CLI shorthand, or None when no edit was given."""
    from saesteer.errors import SaesteerError
    from saesteer.sae import load_sae
    from saesteer.steer import FileRef, InterventionSpec, SteeringSpec

    edits = parse_edits(clamp, add, scale, ablate)
    if not edits:
        if sae is not None:
            raise SaesteerError("--sae given without any --clamp/--add/--scale/--ablate")
        return None
    if sae is None:
        raise SaesteerError("feature edits need --sae SAE_DIR")
    if hook is None:
        meta = load_sae(sae).metadata or {}
        hook = meta.get("hf_hook_name") or (str(meta["layer"]) if meta.get("layer") is not None else None)
        if hook is None:
            raise SaesteerError(f"{sae} does not record its hook point; pass --hook model.layers.N")
    return SteeringSpec(interventions=[InterventionSpec(hook=hook, sae=FileRef(str(Path(sae).resolve())),
                                                        features=edits)], positions=positions)


SteerOpt = Annotated[Optional[Path], typer.Option("--steer", help="Steering spec file (YAML/JSON).")]
SaeOpt = Annotated[Optional[Path], typer.Option("--sae", help="SAE folder for the inline feature edits.")]
HookOpt = Annotated[Optional[str], typer.Option("--hook", help="Hook for inline edits (default: the SAE's own).")]
ClampOpt = Annotated[list[str], typer.Option("--clamp", help="FEATURE=VALUE: clamp a latent (repeatable).")]
AddOpt = Annotated[list[str], typer.Option("--add", help="FEATURE=VALUE: add VALUE x its decoder row.")]
ScaleOpt = Annotated[list[str], typer.Option("--scale", help="FEATURE=FACTOR: scale a latent.")]
AblateOpt = Annotated[list[str], typer.Option("--ablate", help="FEATURE: set a latent to zero.")]
PositionsOpt = Annotated[Optional[str], typer.Option(
    "--positions", help="Tokens steered: all (the paper; the default for inline edits), prompt or generated. "
                        "With --steer it overrides the spec's own.")]


def steering_from_options(steer: Path | None, sae: Path | None, hook: str | None, clamp: list[str],
                          add: list[str], scale: list[str], ablate: list[str], positions: str | None):
    from saesteer.errors import SaesteerError
    from saesteer.steer import SteeringSpec
    from saesteer.steer.interventions import POSITIONS

    if positions is not None and positions not in POSITIONS:
        raise SaesteerError(f"unknown --positions {positions!r}; use {', '.join(POSITIONS)}")
    inline = inline_spec(sae, hook, clamp, add, scale, ablate, positions or "all")
    if steer is not None and inline is not None:
        raise SaesteerError("use either --steer SPEC or inline --sae/--clamp edits, not both")
    spec = SteeringSpec.load(steer) if steer is not None else inline
    if positions is not None:
        if spec is None:
            raise SaesteerError("--positions needs steering: --steer SPEC or inline --sae/--clamp edits")
        spec.positions = positions
    return spec


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    steer: SteerOpt = None,
    sae: SaeOpt = None,
    hook: HookOpt = None,
    clamp: ClampOpt = [],  # noqa: B006 - typer needs a literal default
    add: AddOpt = [],  # noqa: B006
    scale: ScaleOpt = [],  # noqa: B006
    ablate: AblateOpt = [],  # noqa: B006
    positions: PositionsOpt = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    batch_size: int = 8,
    seed: int = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Generate answers (only the answers go to stdout, one per prompt), optionally steered."""
    setup(None)
    from saesteer.generate import GenerationConfig
    from saesteer.generate import generate as run
    from saesteer.models import load_model
    from saesteer.steer import Steering

    spec = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, positions)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, system=system,
                              batch_size=batch_size, seed=seed)
    lm = load_model(model, dtype=dtype, device=device)
    steering = Steering(lm, spec) if spec is not None else None  # every check happens before generating
    with steering.active() if steering is not None else _nullcontext():
        gens = run(lm, prompt, config)
    for gen in gens:
        typer.echo(gen.text)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
