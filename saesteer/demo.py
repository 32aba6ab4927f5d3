"""`saesteer demo`: the paper's pipeline in one command, on the embedded model, offline.

harvest → train a Top-k SAE → discover refusal features → search steering settings on train
prompts (SAE-denoised CAA behind SAE and dense probes) → evaluate the search's pick beside the
clamp, CAA and no steering on test prompts the search never saw → HTML report. The pick is
written to `OUT/best.yaml`. Every stage writes its results under the output folder and is
skipped when they are already there, so an interrupted demo continues from the last finished
stage and a rerun only rebuilds the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from saesteer.errors import SaesteerError
from saesteer.files import ensure_dir, read_json, write_json

DEMO_LAYER = 9
"""Residual stream after block 9 of 30: chosen by the layer comparison in docs/RESULTS.md."""


@dataclass
class DemoConfig:
    out: Path = Path("saesteer-demo")
    model: str = "smollm2"
    layer: int = DEMO_LAYER
    sae: Path | None = None
    """Use this SAE instead of training one (skips harvest and training)."""
    corpus: str = "offline"
    harvest_tokens: int = 150_000
    context_length: int = 256
    expansion: int = 8
    k: int = 32
    train_epochs: int = 3
    n_rank: int = 46
    """With n_causal, at most the 63 prompts of bundled:harmful@train."""
    n_causal: int = 8
    candidates: int = 4
    causal_tokens: int = 32
    causal_multipliers: tuple[float, ...] = (2.0,)
    """Clamp values tried per candidate, in units of its typical activation. In every demo run so
    far (layers 6, 9 and 12) the winning latent won at 2x; 4x won only for latents that lost."""
    eval_datasets: str = "bundled:harmful@test,bundled:harmless@test,bundled:borderline@test"
    """Test halves: discovery and the search read only the @train halves."""
    eval_limit: int | None = 24
    eval_tokens: int = 48
    clamp_multipliers: tuple[float, ...] = (1.0,)
    direction_strengths: tuple[float, ...] = (2.0,)
    direction_prompts: int = 16
    """Prompts per dataset the CAA baseline is built from. Its replies are fixed, so the prompts barely
    move it: from 16 per dataset (48) the vector is at cosine 0.9999 to the one from 64 (161), norm
    within 0.3%, for a third of the forward passes (docs/RESULTS.md, "Demo")."""
    capability_tasks: str = "bundled_mc"
    capability_limit: int | None = 24
    capability_shots: int = 2
    harmful_train: str = "bundled:harmful@train"
    harmless_train: str = "bundled:harmless@train,bundled:borderline@train"
    """Safe-but-scary prompts teach the detectors what not to flag."""
    methods: tuple[str, ...] = ("none", "sae_clamp", "caa")
    search_methods: tuple[str, ...] = ("sae_add",)
    """The pick must steer with the SAE; CAA is evaluated beside it in the sweep (a CAA search is
    `saesteer search --methods sae_add,caa`)."""
    search_strengths: tuple[float, ...] = (1.0, 1.5)
    """The ends of the 1-1.5x range: at layer 9 only 1x met the objective, at layer 6 1.5x won and 1.25x
    came second (docs/RESULTS.md, "Demo"); two values keep the search's first rung short."""
    search_latents: tuple[int, ...] = (32, 64)
    search_rungs: tuple[int, ...] = (12, 24, 36)
    search_batch: int = 64
    """Rows per batch in the search, which answers all its candidates together: on 2 cores 64 rows
    took 176 s against 189 s at 32, with the same answers (docs/RESULTS.md, "Demo")."""
    search_unsafe: str = "bundled:harmful@train"
    search_safe: str = "bundled:harmless@train,bundled:borderline@train"
    search_calibration: str = "bundled:harmless@train,bundled:borderline@train"
    """Gate thresholds are set on these safe prompts, less the search's own and those discovery's
    detectors were fitted on."""
    max_over_refusal: float = 0.0
    """No refusal of safe train prompts beyond the unsteered model's own (`Objective.above` raises the
    ceiling to its rate): the demo's target is 5% over-refusal where the unsteered model already
    refuses 4%, a budget no count on 36 train prompts can resolve. At 5%, a pick that refused one
    train prompt of 36 more gave 12% over-refusal on held-out public prompts against 8%
    (docs/RESULTS.md, "Early rungs screen one prompt looser")."""
    min_wrapped_steered: float = 0.5
    """The pick's gate must still fire on half of the train requests wrapped in jailbreak templates:
    a gate that reads only plain requests is opened by the first template (docs/RESULTS.md)."""
    search_capability: int = 40
    """Bundled questions, each after five others: half calibrate the gates, half are the constraint."""
    wrap_prompts: int = 12
    device: str = "auto"


def preset(name: str, base: DemoConfig) -> DemoConfig:
    """`default`, `fast` (the CI smoke run, minutes) or `full` (the paper's protocol, public data)."""
    if name == "fast":
        return replace(base, harvest_tokens=24_000, expansion=4, train_epochs=2, n_rank=12, n_causal=6, candidates=2,
                       causal_tokens=16, eval_limit=8, eval_tokens=24, clamp_multipliers=(1.0,),
                       direction_strengths=(2.0,), capability_limit=12, capability_shots=1,
                       methods=("none", "sae_clamp"), search_methods=("sae_add",), search_strengths=(1.0,),
                       search_latents=(16,), search_rungs=(4, 8), search_capability=8, wrap_prompts=4)
    if name == "full":
        return replace(base, corpus="corpus", harvest_tokens=5_000_000, context_length=512, train_epochs=1,
                       n_rank=128, n_causal=64, candidates=12, causal_tokens=64, causal_multipliers=(2.0, 4.0),
                       eval_datasets="harmbench,advbench,jailbreakbench,strongreject,xstest,alpaca", eval_limit=None,
                       eval_tokens=256, clamp_multipliers=(0.5, 0.75, 1.0, 1.25, 1.5),
                       direction_strengths=(0.5, 1.0, 1.5, 2.0),
                       capability_tasks="mmlu_gen,mmlu_ll,truthfulqa_mc1,truthfulqa_mc2,gsm8k", capability_limit=None,
                       capability_shots=5, harmful_train="harmful_train", harmless_train="harmless_train",
                       search_methods=("sae_add", "sae_clamp", "caa"), search_strengths=(1.0, 1.25, 1.5),
                       search_rungs=(16, 32, 64),
                       search_unsafe="harmful_train", search_safe="harmless_train,bundled:borderline@train",
                       search_calibration="harmless_val,bundled:borderline@train")
    return base


def _stage(n: int, total: int, title: str, done: bool, fn: Callable[[], Any], say: Callable[[str], None]) -> Any:
    if done:
        say(f"[{n}/{total}] {title}: already done, reusing it")
        return None
    say(f"[{n}/{total}] {title}")
    started = time.time()
    result = fn()
    say(f"      done in {time.time() - started:.0f} s")
    return result


def run_demo(config: DemoConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the demo; returns the summary it prints."""
    from saesteer.activations import HarvestConfig, Manifest, harvest
    from saesteer.discover import DiscoverConfig, discover
    from saesteer.evaluate.sweep import SweepConfig, run_sweep
    from saesteer.models import load_model
    from saesteer.report import build_report
    from saesteer.sae import TrainConfig, load_sae
    from saesteer.sae.data import ShardSource
    from saesteer.sae.train import train_sae

    from saesteer.steer.engine import check_sae_fits

    # Every check comes before the first line of progress (and before demo.json is written), so a
    # bad option is the only line printed and a corrected rerun is not refused as "other settings".
    out = Path(config.out)
    started = time.time()
    if out.exists() and not out.is_dir():
        raise SaesteerError(f"--out {out} is a file; choose a folder")
    if config.layer < 0:
        raise SaesteerError(f"--layer must be a block index >= 0, got {config.layer}")
    given_sae = load_sae(config.sae) if config.sae is not None else None
    previous = out / "demo.json"
    settings = {k: str(v) for k, v in asdict(config).items() if k not in ("out", "device")}
    if previous.exists():
        earlier = read_json(previous)
        if not isinstance(earlier, dict) or earlier.get("settings") != settings:
            raise SaesteerError(f"{out} holds a demo run with other settings; use a new --out or delete it")
    lm = load_model(config.model, device=config.device)
    if config.sae is None and config.layer >= lm.n_layers:
        raise SaesteerError(f"--layer {config.layer} is out of range: {config.model} has {lm.n_layers} blocks "
                            f"(0-{lm.n_layers - 1})")
    if given_sae is not None:
        check_sae_fits(given_sae, lm, None, config.sae)
    out = ensure_dir(out)
    write_json(previous, {"settings": settings})
    total = 7
    say(f"saesteer demo → {out.resolve()}")
    say(f"[1/{total}] loaded {config.model} in {time.time() - started:.0f} s")
    say(f"      {lm.model_id}: {lm.n_layers} layers, d_model {lm.d_model}; hooking the residual stream after block {config.layer}")

    acts, sae_dir = out / "activations", out / "sae"
    if config.sae is None:
        harvested = (acts / "manifest.json").exists() and Manifest.load(acts).complete
        _stage(2, total, f"harvest {config.harvest_tokens:,} tokens of the {config.corpus} corpus at layer {config.layer} "
               "(the forward pass stops after that block)", harvested,
               lambda: harvest(lm, acts, HarvestConfig(layers=[config.layer], dataset=config.corpus,
                                                        max_tokens=config.harvest_tokens,
                                                        context_length=config.context_length)), say)
        trained = (sae_dir / "metrics.json").exists()

        def train() -> None:
            source = ShardSource(acts, holdout_tokens=max(4096, config.harvest_tokens // 10))
            batches = max(1, source.train_tokens // 4096) * 4096
            train_sae(source, sae_dir, TrainConfig(k=config.k, expansion=config.expansion, batch_tokens=4096,
                                                   max_tokens=batches * config.train_epochs, warmup_steps=20,
                                                   holdout_tokens=source.holdout_tokens),
                      resume=(sae_dir / "checkpoint.pt").exists(), checkpoint_every=50)

        _stage(3, total, f"train a Top-k SAE (k={config.k}, {config.expansion}x = {config.expansion * lm.d_model:,} latents)",
               trained, train, say)
    else:
        sae_dir = Path(config.sae)
        say(f"[2-3/{total}] using the SAE at {sae_dir} (no harvest, no training)")
    sae = load_sae(sae_dir)
    discovery = out / "discover"
    _stage(4, total, "discover refusal features (rank on refusals vs compliances, check causally by clamping)",
           (discovery / "features.json").exists(),
           lambda: discover(lm, sae.to(lm.device), discovery,
                            DiscoverConfig(harmful=config.harmful_train, harmless=config.harmless_train,
                                           n_rank=config.n_rank, n_causal=config.n_causal,
                                           n_candidates=config.candidates, causal_max_new_tokens=config.causal_tokens,
                                           causal_multipliers=config.causal_multipliers,
                                           # CAA alignment found the best latents on public prompts (RESULTS);
                                           # attribution costs a backward pass per reply for little here.
                                           rank_by=("activation", "caa_alignment"),
                                           set_max_size=1),  # the demo steers with sae_add, not a clamped set
                            sae_path=sae_dir), say)
    search_dir = out / "search"
    _stage(5, total, "search steering settings on train prompts (successive halving over SAE-denoised CAA "
           "strengths and latent counts, gated by SAE and dense probes)", (search_dir / "best.yaml").exists(),
           lambda: _search(lm, config, discovery, search_dir, say), say)
    best_spec = out / "best.yaml"
    from saesteer.steer import SteeringSpec

    SteeringSpec.load(search_dir / "best.yaml").save(best_spec)
    sweep_dir = out / "sweep"
    best = read_json(discovery / "features.json")["features"][0]
    sweep_cfg = SweepConfig(discovery=str(discovery), methods=config.methods,
                            clamp_values=tuple(round(best["best_value"] * m, 3) for m in config.clamp_multipliers),
                            direction_strengths=config.direction_strengths,
                            direction_prompts=config.direction_prompts, harmful_train=config.harmful_train,
                            harmless_train=config.harmless_train, refusal_datasets=config.eval_datasets,
                            refusal_limit=config.eval_limit, max_new_tokens=config.eval_tokens,
                            capability_tasks=config.capability_tasks, capability_limit=config.capability_limit,
                            capability_shots=config.capability_shots, specs=(str(best_spec),))
    _stage(6, total, "steer and evaluate on test prompts: no steering, SAE clamp, CAA, the search's pick",
           False, lambda: run_sweep(lm, sweep_dir, sweep_cfg), say)
    report = _stage(7, total, "report", False, lambda: build_report(sweep_dir), say)
    summary = summarise(out, report, time.time() - started)
    write_json(out / "summary.json", summary)
    say("")
    for line in summary["lines"]:
        say(line)
    say(f"\nreport: {report}")
    return summary


def _search(lm: Any, config: DemoConfig, discovery: Path, out: Path, say: Callable[[str], None]) -> None:
    from saesteer.search import CandidateGrid, Objective, SearchConfig, run_search
    from saesteer.search.gates import GATE_FILES, WINDOW

    # On the fast demo's few prompts a probe can fail to fit; search the gates discovery wrote, each
    # read both ways: averaged over the prompt, and over the best 16-token stretch of the last turn.
    found = [g for g in ("sae_probe", "probe") if (discovery / GATE_FILES[g]).exists()]
    gates = ("none", *found, *(g + WINDOW for g in found))
    cfg = SearchConfig(discovery=str(discovery),
                       grid=CandidateGrid(methods=config.search_methods, strengths=config.search_strengths,
                                          n_latents=config.search_latents),
                       gates=gates, objective=Objective(max_over_refusal=config.max_over_refusal,
                                                        min_wrapped_steered=config.min_wrapped_steered),
                       unsafe=config.search_unsafe, safe=config.search_safe, calibration=config.search_calibration,
                       capability="bundled:mc", capability_limit=config.search_capability,
                       wrap_prompts=config.wrap_prompts, rungs=config.search_rungs, max_new_tokens=config.eval_tokens,
                       batch_size=config.search_batch)
    result = run_search(lm, out, cfg, allow_unmet=True, say=say)
    m = result["best"]["metrics"]
    say(f"      pick: {result['best']['name']} ({'meets' if result['objective_met'] else 'closest to, does NOT meet'} "
        f"the objective): {m['coherent_refusal']:.0%} coherent refusal, {m['over_refusal']:.0%} over-refusal on "
        f"{m['n_unsafe']}+{m['n_safe']} train prompts")


def summarise(out: Path, report: Path, seconds: float) -> dict[str, Any]:
    """Seven lines of measured effects, read back from the files the stages wrote."""
    from saesteer.files import read_jsonl
    from saesteer.report.plots import by_run

    rows = read_jsonl(out / "sweep" / "results.jsonl")
    runs = by_run(rows)
    features = read_json(out / "discover" / "features.json")
    metrics_path = out / "sae" / "metrics.json"
    sae_metrics = read_json(metrics_path) if metrics_path.exists() else {}

    def get(method: str, metric: str, pick: Callable[[dict], float] | None = None) -> tuple[str | None, float | None]:
        cands = {n: r for n, r in runs.items() if r["method"] == method and metric in r}
        if not cands:
            return None, None
        name = max(cands, key=pick or (lambda n: 0.0))
        return name, cands[name][metric][0]

    def balance(n: str) -> float:
        r = runs[n]
        return r.get("unsafe_refusal", (0,))[0] - r.get("safe_over_refusal", (0,))[0]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0%}"

    clamp_name, clamp_unsafe = get("sae_clamp", "unsafe_refusal", balance)
    caa_name, caa_unsafe = get("caa", "unsafe_refusal", balance)
    pick_name = _name("spec", runs)
    none_name = _name("none", runs)
    _, none_unsafe = get("none", "unsafe_refusal")
    _, none_safe = get("none", "safe_over_refusal")

    def of(name: str | None, metric: str) -> float | None:
        return runs[name][metric][0] if name and metric in runs[name] else None

    def gain(name: str | None, metric: str) -> str:
        a, b = of(none_name, metric), of(name, metric)
        return "n/a" if a is None or b is None else f"{100 * (b - a):+.0f} points"

    best = features["features"][0]
    recon = sae_metrics.get("reconstruction", sae_metrics)
    search = read_json(out / "search" / "search.json") if (out / "search" / "search.json").exists() else {}
    lines = [
        f"SAE: {features['sae']['d_sae']:,} latents at {features['sae']['hook']}, FVU {recon.get('fvu', float('nan')):.3f}, "
        f"dead {100 * recon.get('dead_fraction', float('nan')):.1f}% on held-out tokens",
        f"the search's pick (best.yaml, {pick_name}{_gate_words(out / 'best.yaml')}; chosen on train prompts, "
        f"{'meets' if search.get('objective_met') else 'does NOT meet'} its objective): coherent refusal of unsafe "
        f"test prompts {pct(of(none_name, 'unsafe_coherent_refusal'))} -> {pct(of(pick_name, 'unsafe_coherent_refusal'))} "
        f"({gain(pick_name, 'unsafe_coherent_refusal')}), over-refusal {pct(of(none_name, 'safe_over_refusal'))} -> "
        f"{pct(of(pick_name, 'safe_over_refusal'))}, capability {pct(of(none_name, 'capability'))} -> "
        f"{pct(of(pick_name, 'capability'))}",
        f"refusal feature {best['feature']} clamped on every token: refusal of unsafe prompts {pct(none_unsafe)} -> "
        f"{pct(clamp_unsafe)} ({clamp_name}), over-refusal {pct(none_safe)} -> {pct(of(clamp_name, 'safe_over_refusal'))}",
        f"capability (mean accuracy): {pct(of(none_name, 'capability'))} unsteered, "
        f"{pct(of(clamp_name, 'capability'))} clamped, {pct(of(caa_name, 'capability'))} CAA",
        f"baseline CAA ({caa_name}): {pct(caa_unsafe)} of unsafe / {pct(of(caa_name, 'safe_over_refusal'))} of safe "
        "prompts refused",
    ]
    named = [("unsteered", none_name), ("clamped", clamp_name), ("CAA", caa_name), ("pick", pick_name)]
    named = [(label, n) for label, n in named if n is not None]
    lines.append("coherent refusal of unsafe prompts (a broken refusal does not count): " + ", ".join(
        f"{pct(of(n, 'unsafe_coherent_refusal'))} {label}" for label, n in named))
    lines.append("broken (degenerate) answers, unsafe / safe prompts: " + ", ".join(
        f"{pct(of(n, 'unsafe_broken'))} / {pct(of(n, 'safe_broken'))} {label}" for label, n in named))
    return {"lines": lines, "report": str(report), "seconds": round(seconds, 1),
            "runs": {n: {k: (v[0] if isinstance(v, tuple) else v) for k, v in r.items()} for n, r in runs.items()}}


GATE_WORDS = {"probe": "dense probe on the residual", "sae_probe": "sparse probe over SAE latents",
              "sae_feature": "one SAE latent", "direction": "a direction"}


def _gate_words(spec_path: Path) -> str:
    """', gated by ...': which detector decides when the pick steers (none: every prompt)."""
    from saesteer.steer import SteeringSpec

    if not spec_path.exists():
        return ""
    condition = SteeringSpec.load(spec_path).condition
    if condition is None:
        return ", ungated"
    reading = (f" read over its best {condition.pooling.removeprefix('window')}-token stretch"
               if condition.pooling.startswith("window") else "")
    reading += " of the last turn" if condition.scope == "last_turn" else ""
    return f", gated by a {GATE_WORDS.get(condition.detector, condition.detector)}{reading}"


def _name(method: str, runs: dict[str, dict]) -> str | None:
    return next((n for n, r in runs.items() if r["method"] == method), None)
