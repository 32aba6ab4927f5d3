"""Serving: 16 concurrent clients vs one at a time, latency percentiles, and a bounded load test.

    .venv/bin/python benchmarks/bench_serve.py                       # smollm2, about 7 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_serve.py --requests 8 --reps 2 --load 32    # quicker

Starts `saesteer serve MODEL --steer <refusal direction spec>` on a free loopback port (the spec
is a difference-of-means direction on the bundled prompts, built here in a few seconds), then:

1. throughput: the same N requests (greedy, `max_tokens` fixed) sent one at a time, and by 16
   concurrent clients (closed loop), alternating which goes first, `--reps` times; prints the
   medians and the concurrent/sequential ratio of tokens/s and requests/s, and p50/p95 latency;
2. a bounded load test: `--load` requests (half streamed, half steered), 16 at a time, which
   must all come back complete: zero failed or lost requests, else exit 1.

Traffic goes to 127.0.0.1 only; every loop is bounded by a request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

KEY = "bench-" + os.urandom(8).hex()


def refusal_direction_spec(model: str, out: Path, *, layer: int = 15, n: int = 32, value: float = 2.0) -> Path:
    """A steering spec that adds the difference-of-means refusal direction (Arditi et al.) at `layer`."""
    from saesteer.data import load_records
    from saesteer.models import load_model
    from saesteer.steer import FileRef, InterventionSpec, SteeringSpec
    from saesteer.steer.directions import diff_of_means, save_vectors

    import torch

    torch.set_num_threads(1)  # see --threads below
    lm = load_model(model)
    harmful = [r.prompt for r in load_records("bundled:harmful")[:n]]
    harmless = [r.prompt for r in load_records("bundled:harmless")[:n]]
    hook = f"model.layers.{layer}"
    direction = diff_of_means(lm, harmful, harmless, [layer])[layer]
    save_vectors(out / "refusal_direction.safetensors", {"refusal": direction}, {"layer": layer, "n": n})
    spec = SteeringSpec(interventions=[InterventionSpec(hook=hook, vector=FileRef("refusal_direction.safetensors",
                                                                                  key="refusal"),
                                                        op="add", value=value)],
                        name="refusal-direction", description=f"diff-of-means on {n}+{n} bundled prompts, x{value}",
                        model={"id": lm.model_id})
    return spec.save(out / "refusal_direction.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(model: str, *extra: str, log: Path | None = None):
    """`saesteer serve` in a subprocess on a free loopback port; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-c", "from saesteer.cli import main; main()", "serve", model, "--host", "127.0.0.1",
           "--port", str(port), "--api-key", KEY, *extra]
    err = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 300 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            err.close()


async def one(http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, stream: bool = False) -> dict:
    """One chat request; returns its latency, tokens, text and any failure."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    try:
        if not stream:
            r = await http.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
            data = r.json()
            choice = data["choices"][0]
            return {"ok": choice["finish_reason"] in ("stop", "length"), "latency": time.perf_counter() - started,
                    "tokens": data["usage"]["completion_tokens"], "text": choice["message"]["content"], "id": data["id"]}
        text, tokens, finish, ident, done = [], 0, None, None, False
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line[6:])
                ident = event.get("id", ident)
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for c in event.get("choices", []):
                    text.append(c["delta"].get("content") or "")
                    finish = c.get("finish_reason") or finish
        return {"ok": done and finish in ("stop", "length"), "latency": time.perf_counter() - started,
                "tokens": tokens, "text": "".join(text), "id": ident, "error": None if done else "no [DONE]"}
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


async def run(url: str, jobs: list[tuple[str, str, int, bool]], concurrency: int) -> tuple[float, list[dict]]:
    """Send `jobs` with `concurrency` closed-loop clients; returns (wall seconds, results in job order)."""
    results: list[dict | None] = [None] * len(jobs)
    queue: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):
        queue.put_nowait((i, job))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600,
                                 limits=limits) as http:
        async def client() -> None:
            while not queue.empty():
                i, (model, prompt, max_tokens, stream) = queue.get_nowait()
                results[i] = await one(http, model, prompt, max_tokens, stream)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, [r if r is not None else {"ok": False, "error": "lost"} for r in results]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--requests", type=int, default=16, help="requests per throughput run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--load", type=int, default=64, help="requests in the load test")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="server torch threads (1: measured 5x faster than 2 on these shared 2-core machines)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server subprocess is stopped too

    from saesteer.data import load_records

    prompts = [r.prompt for r in load_records("bundled:harmless")]
    harmful = [r.prompt for r in load_records("bundled:harmful")]
    jobs = [(args.model + ":unsteered", prompts[i % len(prompts)], args.max_tokens, False) for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        spec = refusal_direction_spec(args.model, Path(tmp))
        print(f"refusal-direction spec built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        with server(args.model, "--steer", str(spec), "--max-queue", "256", "--batch-wait-ms", str(args.batch_wait_ms),
                    "--threads", str(args.threads),
                    log=Path(tmp) / "server.log") as url:
            asyncio.run(run(url, jobs[:2], 1))  # warm-up
            runs: dict[str, list[dict]] = {"sequential": [], "concurrent": []}
            for rep in range(args.reps):
                order = ("sequential", "concurrent") if rep % 2 == 0 else ("concurrent", "sequential")
                for mode in order:
                    wall, res = asyncio.run(run(url, jobs, 1 if mode == "sequential" else args.concurrency))
                    failed = [r for r in res if not r["ok"]]
                    if failed:
                        raise SystemExit(f"{mode}: {len(failed)} requests failed: {failed[0]}")
                    tokens = sum(r["tokens"] for r in res)
                    runs[mode].append({"wall_s": wall, "tokens": tokens, "latencies": [r["latency"] for r in res],
                                       "texts": [r["text"] for r in res]})
                    print(f"rep {rep} {mode:>10}: {wall:6.1f} s  {tokens / wall:6.1f} tokens/s  "
                          f"{len(res) / wall:5.2f} requests/s", file=sys.stderr)
            same = all(r["texts"] == runs["sequential"][0]["texts"] for m in runs.values() for r in m)

            # The bounded load test: half streamed, half steered, all must come back whole.
            load_jobs = [(args.model + (":unsteered" if i % 2 else ""), (prompts + harmful)[i % (len(prompts) + len(harmful))],
                          args.max_tokens, i % 4 < 2) for i in range(args.load)]
            load_wall, load_res = asyncio.run(run(url, load_jobs, args.concurrency))
            failed = [r for r in load_res if not r["ok"]]
            ids = {r.get("id") for r in load_res if r["ok"]}
            stats = httpx.get(f"{url}/v1/saesteer/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
            healthy = httpx.get(f"{url}/health").status_code == 200

    summary: dict = {"model": args.model, "requests": args.requests, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "reps": args.reps}
    for mode, reps in runs.items():
        lat = [x for r in reps for x in r["latencies"]]
        summary[mode] = {"tokens_per_s": statistics.median(r["tokens"] / r["wall_s"] for r in reps),
                         "requests_per_s": statistics.median(args.requests / r["wall_s"] for r in reps),
                         "p50_latency_s": percentile(lat, 50), "p95_latency_s": percentile(lat, 95)}
    seq, con = summary["sequential"], summary["concurrent"]
    summary["ratio_tokens_per_s"] = con["tokens_per_s"] / seq["tokens_per_s"]
    summary["ratio_requests_per_s"] = con["requests_per_s"] / seq["requests_per_s"]
    summary["same_answers_batched_and_alone"] = same
    summary["load_test"] = {"requests": args.load, "ok": len(load_res) - len(failed), "failed": len(failed),
                            "lost": args.load - len(load_res) + sum(r.get("error") == "lost" for r in load_res),
                            "unique_ids": len(ids), "wall_s": load_wall,
                            "p50_latency_s": percentile([r["latency"] for r in load_res if r["ok"]], 50),
                            "p95_latency_s": percentile([r["latency"] for r in load_res if r["ok"]], 95),
                            "healthy_after": healthy}
    summary["server_stats"] = stats

    print(f"\n{args.model}: {args.requests} requests x {args.max_tokens} max tokens, greedy, median of {args.reps}")
    print(f"{'':>12} {'tokens/s':>9} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for mode in ("sequential", "concurrent"):
        s = summary[mode]
        label = "1 client" if mode == "sequential" else f"{args.concurrency} clients"
        print(f"{label:>12} {s['tokens_per_s']:9.1f} {s['requests_per_s']:7.2f} {s['p50_latency_s']:7.2f} "
              f"{s['p95_latency_s']:7.2f}")
    print(f"{'ratio':>12} {summary['ratio_tokens_per_s']:8.2f}x {summary['ratio_requests_per_s']:6.2f}x")
    print(f"answers identical batched and one at a time: {same}")
    lt = summary["load_test"]
    print(f"load test: {lt['requests']} requests ({args.concurrency} concurrent, half streamed, half steered): "
          f"{lt['ok']} ok, {lt['failed']} failed, {lt['lost']} lost, {lt['unique_ids']} unique ids, "
          f"{lt['wall_s']:.1f} s, p50 {lt['p50_latency_s']:.2f} s, p95 {lt['p95_latency_s']:.2f} s; "
          f"server healthy after: {healthy}")
    print(f"server: {stats['batches']} batches, mean {stats['mean_batch_rows']} rows, max {stats['max_batch_rows']}")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if failed or lt["lost"] or len(ids) != args.load or not healthy:
        raise SystemExit("load test: some requests failed or were lost")


if __name__ == "__main__":
    main()
