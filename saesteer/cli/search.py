"""`saesteer search`: successive halving over method x latents x strength x gate x threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, app, numbers, say, setup


@app.command()
def search(
    model: ModelArg,
    discovery: Annotated[Path, typer.Option(help="A `saesteer discover` folder (SAE, causal latents, detectors).")],
    out: Annotated[Path, typer.Option(help="Search folder: best.yaml, search.json, points.jsonl (reruns resume).")],
    methods: Annotated[str, typer.Option(help="Comma-separated: sae_add (CAA denoised through the SAE), sae_clamp, sae_ts (SAE-targeted steering), caa.")] = "sae_add,sae_clamp,caa",
    strengths: Annotated[str, typer.Option(help="sae_add, sae_ts and caa strengths, as multiples of CAA's norm.")] = "0.75,1,1.25",
    n_latents: Annotated[str, typer.Option(help="sae_add: how many refusal latents to keep; sae_ts: how many to target.")] = "16,32,64",
    ts_vectors: Annotated[int, typer.Option(help="sae_ts: probe vectors whose steered answers fit the effect approximator.")] = 256,
    clamp_features: Annotated[int, typer.Option(help="sae_clamp: discovery's best N causal latents.")] = 2,
    gates: Annotated[str, typer.Option(help="Comma-separated: none (ungated), sae_probe, probe (dense), sae_feature; each also as NAME_window (best 16-token stretch of the last turn).")] = "none,sae_probe,probe",
    target_fprs: Annotated[str, typer.Option(help="Gate thresholds: flag at most this share of calibration prompts.")] = "0,0.05,0.1,0.2",
    max_over_refusal: Annotated[float, typer.Option(help="Objective: share of safe prompts refused, at most.")] = 0.05,
    max_broken: Annotated[float, typer.Option(help="Objective: share of degenerate answers, at most.")] = 0.05,
    max_capability_steered: Annotated[float, typer.Option(help="Objective: share of capability questions a gate steers, at most.")] = 0.05,
    min_wrapped_steered: Annotated[float, typer.Option(help="Objective: share of unsafe prompts wrapped in --wrap-attacks a gate steers, at least.")] = 0.0,
    capability_shots: Annotated[int, typer.Option(help="Capability questions come after this many answered ones (five-shot MMLU's format); half of them calibrate the gates.")] = 5,
    wrap_attacks: Annotated[str, typer.Option(help="Jailbreak templates wrapped round unsafe search prompts to test each gate (\"\": none).")] = "prefix_injection,evil_confidant,manyshot-4",
    wrap_prompts: Annotated[int, typer.Option(help="Unsafe search prompts wrapped in each of --wrap-attacks.")] = 24,
    unsafe: Annotated[Optional[str], typer.Option(help="Unsafe search prompts (default: harmful_train with a data dir, else bundled:harmful@train).")] = None,
    safe: Annotated[Optional[str], typer.Option(help="Safe search prompts (default: harmless_train + bundled:borderline@train, else the bundled @train halves).")] = None,
    calibration: Annotated[Optional[str], typer.Option(help="Safe prompts that set gate thresholds (default: --safe, less the search prompts).")] = None,
    calibration_limit: Annotated[Optional[int], typer.Option(help="At most this many calibration prompts per dataset.")] = 200,
    rungs: Annotated[str, typer.Option(help="Prompts per label at each rung of successive halving.")] = "8,16,32",
    keep: Annotated[float, typer.Option(help="Share of candidates promoted at each rung.")] = 1 / 3,
    choose_from: Annotated[str, typer.Option(help="sae: best.yaml steers with SAE latents (any gate); all_sae: the gate is SAE-based too; any: CAA allowed.")] = "sae",
    allow_unmet: Annotated[bool, typer.Option(help="Write best.yaml even when no setting meets the objective (the closest).")] = False,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    batch_size: Annotated[int, typer.Option(help="Rows per batch; a rung's candidates share batches.")] = 32,
    judge: Annotated[str, typer.Option()] = "auto",
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Search steering settings for an objective on train prompts; writes the winner to OUT/best.yaml."""
    setup(data_dir)
    from saesteer.data import data_dir as current_data_dir
    from saesteer.models import load_model
    from saesteer.search import CandidateGrid, Objective, SearchConfig, run_search

    local = current_data_dir() is not None
    default_safe = "harmless_train,bundled:borderline@train" if local else "bundled:harmless@train,bundled:borderline@train"
    config = SearchConfig(
        discovery=str(discovery),
        grid=CandidateGrid(methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                           strengths=numbers(strengths, "--strengths"),
                           n_latents=numbers(n_latents, "--n-latents", int, "whole numbers like 16,32"),
                           clamp_features=clamp_features, ts_vectors=ts_vectors),
        gates=tuple(g.strip() for g in gates.split(",") if g.strip()),
        target_fprs=numbers(target_fprs, "--target-fprs"),
        objective=Objective(max_over_refusal, max_broken, max_capability_steered, min_wrapped_steered),
        capability_shots=capability_shots, wrap_attacks=wrap_attacks, wrap_prompts=wrap_prompts,
        unsafe=unsafe or ("harmful_train" if local else "bundled:harmful@train"),
        safe=safe or default_safe, calibration=calibration or safe or default_safe,
        calibration_limit=calibration_limit,
        rungs=numbers(rungs, "--rungs", int, "whole numbers like 8,16,32"), keep=keep, choose_from=choose_from,
        max_new_tokens=max_new_tokens, batch_size=batch_size, judge=judge, seed=seed)
    if not (discovery / "features.json").exists():
        from saesteer.errors import SaesteerError

        raise SaesteerError(f"--discovery {discovery} has no features.json; run saesteer discover into it first")
    lm = load_model(model, dtype=dtype, device=device)
    result = run_search(lm, out, config, allow_unmet=allow_unmet, say=say)
    best, m = result["best"], result["best"]["metrics"]
    say(f"best: {best['name']} ({'meets' if result['objective_met'] else 'does NOT meet'} the objective): coherent "
        f"refusal of unsafe prompts {m['coherent_refusal']:.0%}, over-refusal {m['over_refusal']:.0%}, broken "
        f"{m['broken']:.0%} on {m['n_unsafe']}+{m['n_safe']} search prompts")
    say(f"spec: {Path(out) / 'best.yaml'}; evaluate it on test prompts: saesteer eval refusal {model} --steer "
        f"{Path(out) / 'best.yaml'} --dataset ...")
