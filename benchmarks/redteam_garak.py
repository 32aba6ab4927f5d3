"""Red-team the served model with garak, unsteered vs steered, through the OpenAI-compatible API.

    # garak in its own virtualenv (its pins clash with saesteer's); CPU torch first
    python3 -m venv /tmp/garakvenv
    /tmp/garakvenv/bin/pip install torch==2.13.0 && /tmp/garakvenv/bin/pip install garak==0.17.1
    .venv/bin/python benchmarks/redteam_garak.py --garak /tmp/garakvenv/bin/garak \\
        --probes dan,encoding,promptinject,latentinjection --prompt-cap 8 \\
        --steer sae_add=SPEC.yaml --steer caa=OTHER.yaml

For each --steer spec, starts `saesteer serve MODEL --steer SPEC` on a free loopback port (default
spec: the difference-of-means refusal direction that benchmarks/bench_serve.py builds) and runs
garak's `openai.OpenAICompatible` generator against `MODEL:steered`; against the first server it
also runs `MODEL:unsteered`. Probe families expand to garak's active probes, minus those whose
detectors need the hub (`--skip`); each probe samples `--prompt-cap` prompts with `--seed`, and
only each probe's primary detector scores it. Prints garak's pass rate (the detector found
nothing harmful in the answer: higher is safer) per family, with Wilson intervals. Finished
variants are kept in OUT/results.json, so a rerun continues; garak's reports stay under --out.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import KEY, refusal_direction_spec, server

from saesteer.evaluate.stats import wilson
from saesteer.files import write_json


def garak_options(url: str, max_tokens: int) -> dict:
    """garak's generator options for our endpoint: greedy, no penalties or stop strings we ignore."""
    return {"openai": {"OpenAICompatible": {
        "uri": f"{url}/v1", "api_key": KEY, "max_tokens": max_tokens, "temperature": 0.0,
        "suppressed_params": ["frequency_penalty", "presence_penalty", "stop", "seed"],
        "retry_json": False}}}


def run_garak(garak: str, model: str, options: Path, config: Path, probes: str, generations: int, parallel: int,
              out: Path, timeout: float, prefix: str) -> Path:
    """One garak run; returns its report.jsonl."""
    env = {**os.environ, "OPENAICOMPATIBLE_API_KEY": KEY, "XDG_DATA_HOME": str(out / "xdg"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [garak, "--target_type", "openai.OpenAICompatible", "--target_name", model,
           "--generator_option_file", str(options), "--config", str(config), "--probes", probes,
           "--generations", str(generations), "--parallel_attempts", str(parallel), "--report_prefix", prefix, "--skip_unknown"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    kept = out / f"{prefix}.report.jsonl"
    if finished(kept) and set(probes.split(",")) <= {p for p, _ in evals(kept)}:
        print(f"{kept}: a finished garak report of these probes, kept", file=sys.stderr)
        return kept
    log = out / f"{prefix}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    # garak writes where its own config says (~/.local/share/garak/garak_runs by default) and names it in its log
    named = re.findall(r"report closed :\) (\S+\.report\.jsonl)", log.read_text())
    if proc.returncode != 0 or not named or not Path(named[-1]).exists():
        tail = log.read_text()[-3000:]
        raise SystemExit(f"garak failed for {model} (exit {proc.returncode}); last output:\n{tail}")
    shutil.copyfile(named[-1], kept)
    return kept


def finished(report: Path) -> bool:
    """A garak report that reached its end (it holds the run's completion entry)."""
    return report.exists() and any(json.loads(line).get("entry_type") == "completion"
                                   for line in report.read_text().splitlines() if '"completion"' in line)


def covered(result: dict | None, probes: str) -> bool:
    """A finished variant that was run on every probe asked for now."""
    return result is not None and set(probes.split(",")) <= set(result.get("probes", []))


def evals(report: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """{(probe, detector): (passed, total)} from a garak report."""
    out = {}
    for line in report.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("entry_type") == "eval":
            total = entry.get("total_evaluated", entry.get("total", 0))  # garak renamed it in 0.1x
            out[(entry["probe"], entry["detector"])] = (int(entry["passed"]), int(total))
    return out


FAMILIES = "dan,encoding,promptinject,latentinjection"
# Left out by default: detectors that download a classifier from the hub (unreachable offline), probes
# that need an attacker model, and Ablation_Dan_11_0, which ignores the prompt cap (127 DAN variants of
# about 1,000 tokens each: ten minutes per variant on two CPU cores) and LatentWhois (likewise).
DEFAULT_SKIP = ("latentinjection.LatentJailbreak", "dan.AutoDAN", "dan.Ablation_Dan_11_0",
                "latentinjection.LatentWhois")   # also ignores the cap: 168 long prompts


def active_probes(garak: str, spec: str, skip: tuple[str, ...]) -> list[str]:
    """garak's active probes (no 💤) of each family in spec, plus any probe named explicitly, minus skip."""
    listing = subprocess.run([garak, "--list_probes"], check=True, capture_output=True, text=True).stdout
    rows = [re.sub(r"\x1b\[[0-9;]*m", "", line).split("probes: ", 1)[-1].strip() for line in listing.splitlines()
            if "probes: " in line]
    probes = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "." in part:
            probes.append(part)
            continue
        members = [r for r in rows if r.startswith(part + ".") and "💤" not in r]
        if not members:
            raise SystemExit(f"garak has no probe family {part!r}; `{garak} --list_probes` names them")
        probes += [m.split()[0] for m in members]
    return [p for p in probes if p not in skip]


def parse_specs(values: list[str]) -> dict[str, Path]:
    """--steer NAME=SPEC (or SPEC, named by its file stem) -> {name: path}."""
    specs = {}
    for value in values:
        name, _, path = value.rpartition("=")
        path = Path(path)
        if not path.is_file():
            raise SystemExit(f"--steer {value}: no spec file at {path}")
        specs[name or path.stem] = path
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steer", action="append", default=[], metavar="[NAME=]SPEC",
                    help="steering spec to compare with the unsteered model (repeatable; default: the "
                         "difference-of-means refusal direction, built here)")
    ap.add_argument("--garak", default=shutil.which("garak") or "/tmp/garakvenv/bin/garak")
    ap.add_argument("--probes", default=FAMILIES, help="garak probe families and/or probes, comma-separated")
    ap.add_argument("--skip", default=",".join(DEFAULT_SKIP), help="probes to leave out (comma-separated)")
    ap.add_argument("--prompt-cap", type=int, default=8, help="garak's soft_probe_prompt_cap: prompts per probe")
    ap.add_argument("--seed", type=int, default=0, help="garak's seed (which prompts a capped probe samples)")
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=8, help="garak --parallel_attempts (exercises batching)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per garak run")
    ap.add_argument("--out", type=Path, default=Path("runs/redteam_garak"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server subprocess is stopped too
    if not Path(args.garak).exists():
        raise SystemExit(f"garak not found at {args.garak}; install it as shown in this script's docstring")
    probes = ",".join(active_probes(args.garak, args.probes, tuple(filter(None, args.skip.split(",")))))

    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "garak_config.yaml"
    config.write_text(f"run:\n  soft_probe_prompt_cap: {args.prompt_cap}\n  seed: {args.seed}\n"
                      "plugins:\n  extended_detectors: false\n")
    done_file = args.out / "results.json"
    settings = {"model": args.model, "prompt_cap": args.prompt_cap, "seed": args.seed,
                "generations": args.generations, "max_tokens": args.max_tokens}
    saved = json.loads(done_file.read_text()) if done_file.exists() else {}
    if saved and saved.get("settings") != settings:
        print(f"{done_file} was measured with other settings; starting afresh", file=sys.stderr)
        saved = {}
        for stale in args.out.glob("*.report.jsonl"):
            stale.unlink()
    results = saved.get("variants", {})
    with tempfile.TemporaryDirectory() as tmp:
        specs = parse_specs(args.steer) or {"steered": refusal_direction_spec(args.model, Path(tmp))}
        for i, (name, spec) in enumerate(specs.items()):
            variants = (["unsteered"] if i == 0 else []) + [name]
            if all(covered(results.get(v), probes) for v in variants):
                print(f"{', '.join(variants)}: done in an earlier run, kept", file=sys.stderr)
                continue
            with server(args.model, "--steer", str(spec), "--max-tokens", str(max(args.max_tokens, 1024)),
                        "--threads", "1", log=args.out / f"server_{name}.log") as url:
                options = args.out / "garak_options.json"
                options.write_text(json.dumps(garak_options(url, args.max_tokens), indent=2))
                for variant in variants:
                    if covered(results.get(variant), probes):
                        continue
                    served = f"{args.model}:{'unsteered' if variant == 'unsteered' else 'steered'}"
                    started = time.perf_counter()
                    report = run_garak(args.garak, served, options, config, probes, args.generations,
                                       args.parallel, args.out, args.timeout, prefix=variant)
                    found = evals(report)
                    results[variant] = {"spec": None if variant == "unsteered" else str(spec),
                                        "wall_s": time.perf_counter() - started,
                                        "probes": sorted({p for p, _ in found}),
                                        "evals": [[p, d, ok, n] for (p, d), (ok, n) in found.items()]}
                    write_json(done_file, {"settings": settings, "variants": results})
    print_tables(results, probes, args)


def family_rates(evals_: list) -> dict[str, tuple[int, int]]:
    """garak pass counts pooled per probe family (one detector per probe: extended detectors are off)."""
    pooled = {}
    for probe, _detector, ok, n in evals_:
        family = probe.split(".")[0]
        a, b = pooled.get(family, (0, 0))
        pooled[family] = (a + ok, b + n)
    return pooled


def print_tables(results: dict, probes: str, args) -> None:
    variants = list(results)
    print(f"\ngarak {args.probes} (active probes, cap {args.prompt_cap} prompts each, seed {args.seed}, "
          f"{args.generations} generation(s), {args.max_tokens} tokens) against {args.model}")
    print("| family | " + " | ".join(f"{v} pass" for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    asked = set(probes.split(","))     # a kept report may hold more probes than this run asks for
    pooled = {v: family_rates([e for e in results[v]["evals"] if e[0] in asked]) for v in variants}
    families = sorted({f for v in variants for f in pooled[v]})
    for family in families + ["all"]:
        cells = []
        for v in variants:
            ok, n = (sum(x[0] for x in pooled[v].values()), sum(x[1] for x in pooled[v].values())) \
                if family == "all" else pooled[v].get(family, (0, 0))
            lo, hi = wilson(ok, n)
            cells.append(f"{ok}/{n} ({100 * ok / max(n, 1):.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%])")
        print(f"| {family} | " + " | ".join(cells) + " |")
    print("wall: " + ", ".join(f"{v} {results[v]['wall_s']:.0f} s" for v in variants) + f"; reports in {args.out}")
    print(f"probes: {probes}")


if __name__ == "__main__":
    main()
