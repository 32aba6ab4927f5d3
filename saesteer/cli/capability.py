"""`saesteer eval capability`: MMLU, TruthfulQA and GSM8K under steering, with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, ModelArg, eval_app, say, setup
from saesteer.cli.core import (AblateOpt, AddOpt, ClampOpt, HookOpt, PositionsOpt, SaeOpt, ScaleOpt, SteerOpt,
                               steering_from_options)

DEFAULT_TASKS = "mmlu_gen,mmlu_ll,truthfulqa_mc1,truthfulqa_mc2,gsm8k"


@eval_app.command("capability")
def capability(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder (a rerun resumes it; tasks can be added).")],
    tasks: Annotated[str, typer.Option(help="Comma-separated: mmlu_gen, mmlu_ll, truthfulqa_mc1, "
                                            "truthfulqa_mc2, gsm8k, gsm8k_chat (public data), or bundled_mc, "
                                            "bundled_mc_ll, bundled_math (offline).")] = DEFAULT_TASKS,
    limit: Annotated[Optional[int], typer.Option(help="At most N items per task (seeded sample).")] = None,
    steer: SteerOpt = None,
    sae: SaeOpt = None,
    hook: HookOpt = None,
    clamp: ClampOpt = [],  # noqa: B006
    add: AddOpt = [],  # noqa: B006
    scale: ScaleOpt = [],  # noqa: B006
    ablate: AblateOpt = [],  # noqa: B006
    positions: PositionsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 8,
    mmlu_shots: Annotated[int, typer.Option(help="MMLU exemplars (0-5).")] = 5,
    gsm8k_shots: Annotated[int, typer.Option(help="GSM8K chain-of-thought exemplars (0-8).")] = 8,
    mmlu_max_new_tokens: Annotated[int, typer.Option(help="Generation budget of mmlu_gen.")] = 64,
    gsm8k_max_new_tokens: Annotated[int, typer.Option(help="Generation budget of gsm8k.")] = 256,
    judge: Annotated[str, typer.Option(help="Refusal judge for mmlu_gen replies, or none.")] = "auto",
    system: Annotated[Optional[str], typer.Option(help="System prompt of the chat tasks.")] = None,
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Score capability tasks (optionally steered); write items.jsonl + summary.json."""
    setup(data_dir)
    from saesteer.evaluate.capability import CapabilityConfig, evaluate_capability
    from saesteer.models import load_model

    config = CapabilityConfig(tasks=tasks, limit=limit, seed=seed, mmlu_shots=mmlu_shots, gsm8k_shots=gsm8k_shots,
                              mmlu_max_new_tokens=mmlu_max_new_tokens, gsm8k_max_new_tokens=gsm8k_max_new_tokens,
                              judge=None if judge == "none" else judge, system=system, batch_size=batch_size)
    spec = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, positions)
    lm = load_model(model, dtype=dtype, device=device)
    summary = evaluate_capability(lm, out, config, spec)
    if not summary:
        return
    for task, s in summary["tasks"].items():
        score = s["score"]
        line = (f"{task}: {score['metric']} {score['value']:.1%} "
                f"[{score['ci95'][0]:.1%}, {score['ci95'][1]:.1%}] (n={score['n']})")
        if "letters" in s:
            hist = " ".join(f"{k}={v['rate']:.0%}" for k, v in s["letters"].items())
            line += f"; letters {hist}"
            if s.get("refusal"):
                line += f"; refusals {s['refusal']['rate']:.1%}"
        say(line)
    say(f"wrote {Path(out) / 'items.jsonl'} and {Path(out) / 'summary.json'}")
