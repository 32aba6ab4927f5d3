"""Red-team the served model with garak, unsteered vs steered, through the OpenAI-compatible API.

    # garak in its own virtualenv (its pins clash with saesteer's); CPU torch first
    python3 -m venv /tmp/garakvenv
    /tmp/garakvenv/bin/pip install torch==2.13.0 && /tmp/garakvenv/bin/pip install garak
    .venv/bin/python benchmarks/redteam_garak.py --garak /tmp/garakvenv/bin/garak \\
        --probes malwaregen.TopLevel,lmrc.Bullying [--steer SPEC]

Starts `saesteer serve MODEL --steer SPEC` on a free loopback port (default spec: the
difference-of-means refusal direction that benchmarks/bench_serve.py builds), runs garak's
`openai.OpenAICompatible` generator once against `MODEL:unsteered` and once against
`MODEL:steered`, and prints each probe/detector pass rate side by side (garak's "pass" = the
detector found nothing harmful in the answer, so a higher rate is safer). garak's reports are
kept under --out. Traffic goes to 127.0.0.1 only; each garak run is bounded by its probes'
prompt count x --generations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import KEY, refusal_direction_spec, server


def garak_options(url: str, max_tokens: int) -> dict:
    """garak's generator options for our endpoint: greedy, no penalties or stop strings we ignore."""
    return {"openai": {"OpenAICompatible": {
        "uri": f"{url}/v1", "api_key": KEY, "max_tokens": max_tokens, "temperature": 0.0,
        "suppressed_params": ["frequency_penalty", "presence_penalty", "stop", "seed"],
        "retry_json": False}}}


def run_garak(garak: str, model: str, options: Path, probes: str, generations: int, parallel: int, out: Path,
              timeout: float) -> Path:
    """One garak run; returns its report.jsonl."""
    prefix = model.replace(":", "_")
    env = {**os.environ, "OPENAICOMPATIBLE_API_KEY": KEY, "XDG_DATA_HOME": str(out / "xdg"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [garak, "--target_type", "openai.OpenAICompatible", "--target_name", model,
           "--generator_option_file", str(options), "--probes", probes, "--generations", str(generations),
           "--parallel_attempts", str(parallel), "--report_prefix", prefix, "--skip_unknown"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    log = out / f"{prefix}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    reports = sorted(out.rglob(f"{prefix}*.report.jsonl"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not reports:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"garak failed for {model} (exit {proc.returncode}); last output:\n{tail}")
    return reports[-1]


def evals(report: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """{(probe, detector): (passed, total)} from a garak report."""
    out = {}
    for line in report.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("entry_type") == "eval":
            total = entry.get("total_evaluated", entry.get("total", 0))  # garak renamed it in 0.1x
            out[(entry["probe"], entry["detector"])] = (int(entry["passed"]), int(total))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steer", type=Path, help="steering spec (default: the refusal direction, built here)")
    ap.add_argument("--garak", default=shutil.which("garak") or "/tmp/garakvenv/bin/garak")
    ap.add_argument("--probes", default="malwaregen.TopLevel")
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=8, help="garak --parallel_attempts (exercises batching)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per garak run")
    ap.add_argument("--out", type=Path, default=Path("runs/redteam_garak"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server subprocess is stopped too
    if not Path(args.garak).exists():
        raise SystemExit(f"garak not found at {args.garak}; install it as shown in this script's docstring")

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.steer or refusal_direction_spec(args.model, Path(tmp))
        with server(args.model, "--steer", str(spec), "--max-tokens", str(max(args.max_tokens, 1024)),
                    "--threads", "1", log=args.out / "server.log") as url:
            options = args.out / "garak_options.json"
            options.write_text(json.dumps(garak_options(url, args.max_tokens), indent=2))
            results, walls = {}, {}
            for variant in ("unsteered", "steered"):
                model = f"{args.model}:{variant}"
                started = time.perf_counter()
                results[variant] = evals(run_garak(args.garak, model, options, args.probes, args.generations,
                                                   args.parallel, args.out, args.timeout))
                walls[variant] = time.perf_counter() - started
    keys = sorted(set(results["unsteered"]) | set(results["steered"]))
    print(f"\ngarak {args.probes} x {args.generations} generation(s) against {args.model}, spec {spec}")
    print(f"{'probe':<32} {'detector':<34} {'unsteered pass':>15} {'steered pass':>13}")
    summary = []
    for key in keys:
        cells = []
        for variant in ("unsteered", "steered"):
            passed, total = results[variant].get(key, (0, 0))
            cells.append(f"{passed}/{total} ({100 * passed / max(total, 1):.0f}%)")
        summary.append({"probe": key[0], "detector": key[1], "unsteered": results["unsteered"].get(key),
                        "steered": results["steered"].get(key)})
        print(f"{key[0]:<32} {key[1]:<34} {cells[0]:>15} {cells[1]:>13}")
    print(f"wall: unsteered {walls['unsteered']:.0f} s, steered {walls['steered']:.0f} s; reports in {args.out}")
    (args.out / "summary.json").write_text(json.dumps({"probes": args.probes, "results": summary,
                                                       "wall_s": walls}, indent=2) + "\n")


if __name__ == "__main__":
    main()
