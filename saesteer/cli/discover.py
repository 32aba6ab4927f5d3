"""`saesteer discover`: find and check the refusal features of an SAE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, app, say, setup


@app.command()
def discover(
    model: ModelArg,
    sae: Annotated[Path, typer.Option("--sae", help="SAE folder (SAELens layout) trained on this model.")],
    out: Annotated[Path, typer.Option(help="Output folder for features.json, index.html and specs.")],
    harmful: Annotated[Optional[str], typer.Option(help="Harmful prompts (default: harmful_train with a data dir, else bundled:harmful).")] = None,
    harmless: Annotated[Optional[str], typer.Option(help="Harmless prompts (default: harmless_train with a data dir, else bundled:harmless).")] = None,
    n_rank: Annotated[int, typer.Option(help="Prompts per class for ranking.")] = 64,
    n_causal: Annotated[int, typer.Option(help="Held-out prompts per class for the causal check.")] = 16,
    candidates: Annotated[int, typer.Option(help="Latents to inspect and check causally, drawn in turn from each --rank-by order.")] = 32,
    rank_by: Annotated[str, typer.Option(help="Orders the candidates come from: activation, attribution, gradient, caa_alignment, diffmean_alignment.")] = "activation,attribution,caa_alignment,diffmean_alignment",
    set_size: Annotated[int, typer.Option(help="Most latents in the greedy multi-feature set (multi.yaml); 1 skips it.")] = 4,
    values: Annotated[Optional[str], typer.Option(help="Absolute clamp values, e.g. 20,40 (default: 2x and 4x each latent's max activation).")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    judge: Annotated[str, typer.Option()] = "auto",
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Rank latents on refusal vs compliance responses, inspect the best, clamp them to check."""
    setup(data_dir)
    from saesteer.data import data_dir as current_data_dir
    from saesteer.discover import DiscoverConfig
    from saesteer.discover import discover as run
    from saesteer.errors import SaesteerError
    from saesteer.models import load_model
    from saesteer.sae import load_sae

    local = current_data_dir() is not None
    try:
        causal_values = tuple(float(v) for v in values.split(",")) if values else ()
    except ValueError as e:
        raise SaesteerError(f"--values expects numbers like 20,40, got {values!r}") from e
    config = DiscoverConfig(harmful=harmful or ("harmful_train" if local else "bundled:harmful"),
                            harmless=harmless or ("harmless_train" if local else "bundled:harmless"),
                            n_rank=n_rank, n_causal=n_causal, n_candidates=candidates, causal_values=causal_values,
                            rank_by=tuple(r.strip() for r in rank_by.split(",") if r.strip()), set_max_size=set_size,
                            max_new_tokens=max_new_tokens, judge=judge, seed=seed)
    sae_model = load_sae(sae)
    lm = load_model(model, dtype=dtype, device=device)
    result = run(lm, sae_model.to(lm.device), out, config, sae_path=sae)
    best = result["features"][0]
    say(f"best feature {best['feature']}: clamp {best['best_value']:.3g} -> harmful refusal "
        f"{result['baseline']['harmful_refusal']:.0%} -> {best['best_harmful_gain'] + result['baseline']['harmful_refusal']:.0%}")
    if result["feature_set"] is not None:
        fs = result["feature_set"]
        say(f"greedy set {fs['features']}: harmful coherent refusal {result['baseline']['harmful_refusal']:.0%} -> "
            f"{fs['harmful_refusal']:.0%}, harmless refusal {fs['harmless_refusal']:.0%}")
    say(f"wrote {Path(out) / 'features.json'}, {Path(out) / 'index.html'} and the specs: {', '.join(result['specs'].values())}")
