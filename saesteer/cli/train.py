"""`saesteer train` (Top-k SAE on harvested shards or streamed from a model) and `saesteer eval sae`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, app, eval_app, say, setup


@app.command()
def train(
    acts_dir: Annotated[Optional[Path], typer.Argument(help="Harvest folder (saesteer harvest); omit with --model to stream.")] = None,
    out: Annotated[Path, typer.Option(help="SAE folder: cfg.json, sae_weights.safetensors, metrics.json, checkpoint.pt.")] = ...,  # type: ignore[assignment]
    layer: Annotated[Optional[str], typer.Option(help="Layer (index or module path); needed when the harvest holds several.")] = None,
    k: Annotated[int, typer.Option(help="Active latents per token.")] = 32,
    expansion: Annotated[int, typer.Option(help="Latents per input dimension.")] = 8,
    d_sae: Annotated[Optional[int], typer.Option(help="Dictionary size (overrides --expansion).")] = None,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per optimiser step (all ranks together).")] = 4096,
    max_tokens: Annotated[Optional[int], typer.Option(help="Training tokens (default: one pass over the shards).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 2e-3 / sqrt(d_sae / 16384)).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 100,
    decay_fraction: Annotated[float, typer.Option(help="Final share of the run with linear decay to 0.")] = 0.2,
    auxk_coef: Annotated[float, typer.Option(help="AuxK weight; 0 turns it off (as the paper did).")] = 1 / 32,
    k_aux: Annotated[Optional[int], typer.Option(help="Dead latents per token in AuxK (default d_in / 2).")] = None,
    dead_tokens: Annotated[int, typer.Option(help="Tokens without firing after which a latent is dead.")] = 1_000_000,
    normalize: Annotated[bool, typer.Option(help="Scale inputs to mean norm sqrt(d_in) (folded into the saved SAE).")] = True,
    autocast: Annotated[str, typer.Option(help="Encoder matmul dtype: float32 or bfloat16 (GPU).")] = "float32",
    seed: int = 0,
    holdout_tokens: Annotated[int, typer.Option(help="Held-out activation tokens (last shards) for the metrics.")] = 200_000,
    eval_tokens: Annotated[int, typer.Option(help="Held-out tokens for FVU/L0/dead.")] = 200_000,
    ce_contexts: Annotated[int, typer.Option(help="Held-out contexts for the spliced CE/KL metrics (0 = skip).")] = 64,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Stream activations from this model instead of ACTS_DIR.")] = None,
    dataset: Annotated[str, typer.Option(help="Corpus to stream (with --model).")] = "corpus",
    context_length: Annotated[int, typer.Option(help="Context length when streaming.")] = 512,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train a Top-k SAE (Gao et al. 2024) and write it in SAELens layout with metrics.json.

    Under `torchrun --nproc_per_node N` it trains data-parallel, each rank reading its own shards.
    """
    setup(data_dir)
    from saesteer.errors import SaesteerError, at_least
    from saesteer.models import load_model, resolve_device
    from saesteer.sae.config import TrainConfig
    from saesteer.sae.data import ShardSource, StreamSource
    from saesteer.sae.train import train_sae

    if (acts_dir is None) == (model is None):
        raise SaesteerError("give either ACTS_DIR (a harvest folder) or --model (stream from a model), not both")
    at_least(2, context_length=context_length)
    config = TrainConfig(k=k, expansion=expansion, d_sae=d_sae, batch_tokens=batch_tokens, max_tokens=max_tokens,
                         lr=lr, warmup_steps=warmup_steps, decay_fraction=decay_fraction, auxk_coef=auxk_coef,
                         k_aux=k_aux, dead_tokens=dead_tokens, normalize=normalize, autocast=autocast,  # type: ignore[arg-type]
                         seed=seed, holdout_tokens=holdout_tokens)
    dev = resolve_device(device)
    lm = None
    source: Any
    if model is not None:
        if layer is None:
            raise SaesteerError("streaming needs --layer")
        lm = load_model(model, device=str(dev))
        source = StreamSource(lm, int(layer) if layer.lstrip("-").isdigit() else layer, dataset=dataset,
                              context_length=context_length, holdout_tokens=holdout_tokens, seed=seed)
    else:
        source = ShardSource(acts_dir, layer, holdout_tokens=holdout_tokens, buffer_shards=config.buffer_shards)  # type: ignore[arg-type]
        name = source.store.manifest.model_name
        lm = lambda: _try_model(name, str(dev))  # noqa: E731  (loaded after training, if at all)
    config.dict_size(source.d_model)
    result = train_sae(source, out, config, resume=resume, checkpoint_every=checkpoint_every, device=dev,
                       eval_tokens=eval_tokens, ce_contexts=ce_contexts, lm=lm, progress=progress)
    if result is not None:
        say(f"SAE written to {result.out}")
        typer.echo(json.dumps(result.metrics, indent=2))


def _try_model(name: str, device: str) -> Any:
    from saesteer.errors import SaesteerError
    from saesteer.models import load_model

    try:
        return load_model(name, device=device)
    except SaesteerError as e:
        say(f"note: skipping the spliced CE metrics: cannot load model {name!r} ({e})")
        return None


@eval_app.command("sae")
def eval_sae(
    sae_dir: Annotated[Path, typer.Argument(help="SAE folder (ours, SAELens or sparsify layout).")],
    acts: Annotated[Optional[Path], typer.Option(help="Harvest folder for FVU/L0/dead (its held-out shards).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of --acts (default: the SAE's own).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model for the spliced CE/KL (default: the SAE's model).")] = None,
    dataset: Annotated[str, typer.Option(help="Texts for the spliced metrics when --acts is not given.")] = "corpus",
    contexts: Annotated[int, typer.Option(help="Contexts for the spliced CE/KL (0 = skip).")] = 64,
    context_length: Annotated[int, typer.Option(help="Context length without --acts.")] = 512,
    eval_tokens: Annotated[int, typer.Option(help="Activation tokens for FVU/L0/dead.")] = 200_000,
    holdout_tokens: Annotated[Optional[int], typer.Option(help="Held-out tokens of --acts (default: as trained).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the metrics here (JSON).")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Contexts per forward pass.")] = 2,
    seed: int = 0,
) -> None:
    """Reconstruction (FVU, MSE, L0, dead) and spliced-model metrics (CE clean/spliced/zero,
    CE loss recovered, KL) of any SAE; printed as JSON."""
    setup(data_dir)
    from saesteer.errors import SaesteerError, at_least
    from saesteer.files import write_json
    from saesteer.models import load_model, resolve_device
    from saesteer.sae import load_sae
    from saesteer.sae.data import ShardSource, StreamSource
    from saesteer.sae.metrics import evaluate_sae

    at_least(0, contexts=contexts)
    at_least(1, eval_tokens=eval_tokens, batch_size=batch_size, holdout_tokens=holdout_tokens)
    at_least(2, context_length=context_length)
    if out is not None and out.is_dir():
        raise SaesteerError(f"--out {out} is a folder; give a file path, e.g. {out / 'metrics.json'}")
    dev = resolve_device(device)
    sae = load_sae(sae_dir, device=dev)
    meta = sae.metadata
    activations = None
    ctx = None
    lm = None
    if acts is not None:
        holdout = holdout_tokens or (meta.get("saesteer_train") or {}).get("holdout_tokens", 200_000)
        source = ShardSource(acts, layer if layer is not None else _sae_hook(sae, acts), holdout_tokens=holdout)
        check_acts_match(sae, source)
        activations = source.holdout(eval_tokens)
        if contexts > 0:
            lm = load_model(model or source.store.manifest.model_name, device=str(dev))
            ctx = source.holdout_contexts(contexts)
    elif contexts > 0:
        name = model or meta.get("model_name")
        if not name:
            raise SaesteerError("the SAE names no model; pass --model")
        lm = load_model(name, device=str(dev))
        layer = meta.get("layer") if meta.get("layer") is not None else (meta.get("hf_hook_name") or meta.get("hook_name"))
        stream = StreamSource(lm, layer, dataset=dataset, context_length=context_length,
                              holdout_tokens=contexts * (context_length - 1), seed=seed)
        ctx = stream.holdout_contexts(contexts)
    else:
        raise SaesteerError("nothing to evaluate on: give --acts, or --contexts > 0 with a model")
    metrics = evaluate_sae(sae, activations=activations, lm=lm, contexts=ctx, batch_size=batch_size)
    metrics.update(sae=str(sae_dir), architecture=sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae, k=sae.k,
                   content_hash=sae.content_hash())
    if out is not None:
        write_json(out, metrics)
    typer.echo(json.dumps(metrics, indent=2))


def _sae_hook(sae: Any, acts: Path) -> int | str | None:
    from saesteer.activations import Manifest

    layer = sae.metadata.get("layer")
    manifest = Manifest.load(acts)
    if layer is None or len(manifest.layers) == 1 and layer not in manifest.layers:
        return None  # checked by check_acts_match
    return layer


def check_acts_match(sae: Any, source: Any) -> None:
    """Width, model and hook of a harvest must be the SAE's."""
    from saesteer.errors import SaesteerError

    m = source.store.manifest
    if m.d_model != sae.d_in:
        raise SaesteerError(f"activations in {source.folder} have width {m.d_model} but the SAE expects "
                            f"d_in = {sae.d_in}")
    meta = sae.metadata
    if meta.get("model_id") and meta["model_id"] != m.model_id:
        raise SaesteerError(f"activations in {source.folder} come from model {m.model_id!r} but the SAE was "
                            f"trained on {meta['model_id']!r}")
    if meta.get("layer") is not None and meta["layer"] != source.store.layer:
        raise SaesteerError(f"activations in {source.folder} are from layer {source.store.layer} but the SAE "
                            f"reads layer {meta['layer']}")
