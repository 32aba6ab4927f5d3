"""`saesteer eval attacks`: single-turn jailbreaks, encodings, prefilling and many-shot attacks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DataDirOpt, DeviceOpt, DtypeOpt, eval_app, say, setup
from saesteer.cli.core import (AblateOpt, AddOpt, ClampOpt, HookOpt, SaeOpt, ScaleOpt, SteerOpt,
                               steering_from_options)
from saesteer.evaluate.stats import describe


def _opt(help_text: str, *names: str):
    return typer.Option(*names, help=help_text)


@eval_app.command("attacks")
def attacks(
    model: Annotated[Optional[str], typer.Argument(
        help="Alias (smollm2, gemma3-270m), hub id, local folder or .gguf file.")] = None,
    out: Annotated[Optional[Path], _opt("Output folder (a rerun resumes it).")] = None,
    dataset: Annotated[str, _opt("Comma-separated harmful datasets or files (safe-labelled prompts are left out).")]
    = "bundled:harmful",
    attacks: Annotated[str, _opt("Comma-separated attacks, families or `all` (see --list); the plain "
                                 "request always runs as the baseline.")] = "all",
    list_attacks: Annotated[bool, _opt("Print the attacks (name, family, description, source) and exit.",
                                       "--list")] = False,
    list_pyrit: Annotated[bool, _opt("With --list: also PyRIT's jailbreak templates (needs the pyrit extra).",
                                     "--pyrit")] = False,
    limit: Annotated[Optional[int], _opt("At most N prompts per dataset (seeded sample).")] = None,
    benign: Annotated[Optional[str], _opt("Safe prompts (datasets or files) answered plainly in the same run, "
                                          "for over-refusal beside the attacks' gain (e.g. xstest:safe).")] = None,
    steer: SteerOpt = None,
    sae: SaeOpt = None,
    hook: HookOpt = None,
    clamp: ClampOpt = [],  # noqa: B006
    add: AddOpt = [],  # noqa: B006
    scale: ScaleOpt = [],  # noqa: B006
    ablate: AblateOpt = [],  # noqa: B006
    positions: Annotated[Optional[str], _opt("Steering positions overriding the spec's: all, prompt, generated, "
                                             "or several (all,prompt,generated) reported side by side.")] = None,
    max_new_tokens: Annotated[int, _opt("Tokens per answer.")] = 128,
    batch_size: int = 32,
    judge: Annotated[str, _opt("Refusal judge (see saesteer judge --help).")] = "auto",
    system: Annotated[Optional[str], _opt("System prompt.")] = None,
    seed: int = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Apply single-turn attacks to harmful prompts and report attack success per attack and overall.

    Writes responses.jsonl (one row per attack x prompt) and summary.json (success rates with 95%
    intervals, the plain request's refusal rate, many-shot success against N); a rerun resumes.
    Success = a coherent, non-refused, on-topic answer (saesteer.attacks.success).
    """
    from saesteer.errors import SaesteerError

    if list_attacks:
        from saesteer.attacks.catalog import listing

        for row in listing(pyrit=list_pyrit):
            typer.echo(f"{row['name']:<24} {row['family']:<11} {row['description']}  [{row['source']}]")
        return
    if model is None or out is None:
        raise SaesteerError("give MODEL and --out DIR (or --list to see the attacks)")
    setup(data_dir)
    from saesteer.attacks.catalog import resolve_attacks
    from saesteer.attacks.single_turn import AttackEvalConfig, evaluate_attacks, parse_positions

    config = AttackEvalConfig(datasets=dataset, attacks=attacks, limit=limit, benign=benign, positions=positions,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, judge=judge, system=system,
                              seed=seed)
    resolve_attacks(attacks)                     # names, files and extras checked before the model loads
    spec = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, None)   # positions: parse_positions
    parse_positions(positions, spec)
    from saesteer.models import load_model

    lm = load_model(model, dtype=dtype, device=device)
    summary = evaluate_attacks(lm, out, config, spec)
    _report(summary, out)


def _report(summary: dict, out: Path) -> None:
    groups = summary.get("by_positions") or {summary["positions"]: summary}
    for positions, g in groups.items():
        where = f" [positions {positions}]" if positions else ""
        say(f"plain request{where}: refusal {describe(g['plain']['refusal'])}, success {describe(g['plain']['asr'])}")
        for name, s in g["attacks"].items():
            extra = (f"; {s['failed']} failed" if s["failed"] else "") + \
                (f"; {s['too_long']} too long for the model's context, skipped" if s.get("too_long") else "")
            say(f"  {name:<22} success {describe(s['asr'])}{extra}")
        say(f"overall{where}: success {describe(g['overall']['asr'])}; any attack {describe(g['overall']['any_attack'])}")
        if "over_refusal" in g:
            say(f"over-refusal on safe prompts{where}: {describe(g['over_refusal'])}")
    failed = sum(s["failed"] for g in groups.values() for s in g["attacks"].values())
    if failed:
        say(f"note: {failed} rows could not be built (converter errors, kept as failed rows with the reason; "
            "see responses.jsonl)")
    if not summary.get("complete", True):
        say("note: the run is incomplete; rerun the same command to continue")
    say(f"wrote {out / 'responses.jsonl'} and {out / 'summary.json'}")
