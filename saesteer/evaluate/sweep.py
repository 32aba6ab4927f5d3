"""A grid of steering methods and strengths, each evaluated for refusal, over-refusal and
capability, gathered into one tidy results table.

Methods: `none`; `sae_clamp` (the paper: a discovered latent clamped on every token);
`conditional_sae_clamp` (the same, only on prompts a detector flags); `refusal_direction`
(Arditi et al.'s difference of means, added); `caa` (contrastive activation addition from
refusal vs compliance replies). Each grid point is a steering spec written under
`specs/`; its evaluations live under `runs/<name>/` and resume; `results.jsonl` /
`results.csv` are rebuilt from the finished runs every time. Any spec file (a search's
`best.yaml`) joins the grid as method `spec`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saesteer.data import load_records
from saesteer.errors import SaesteerError, at_least
from saesteer.files import ensure_dir, read_json, write_json, write_text
from saesteer.generate import EVAL_BATCH
from saesteer.models import ChatModel
from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, SteeringSpec
from saesteer.steer.conditions import SCOPES
from saesteer.steer.directions import caa_direction, diff_of_means, save_vectors

METHODS = ("none", "sae_clamp", "conditional_sae_clamp", "refusal_direction", "caa")


@dataclass
class SweepConfig:
    discovery: str | None = None
    """A `saesteer discover` folder: supplies the SAE, the best latent(s) and the detector."""
    methods: tuple[str, ...] = METHODS
    features: tuple[int, ...] = ()
    """Latents to clamp (default: the best one of the discovery)."""
    clamp_values: tuple[float, ...] = ()
    """Clamp values (default: 0.5, 1 and 1.5 x the discovery's best value)."""
    direction_layer: int | None = None
    """Layer of the dense baselines (default: the SAE's layer)."""
    specs: tuple[str, ...] = ()
    """Steering spec files evaluated as grid points of their own (method `spec`), e.g. the
    `best.yaml` of a `saesteer search`."""
    condition_scope: str | None = None
    """Override of the conditional clamp detector's scope: "prompt" or "last_turn"."""
    direction_strengths: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Multiples of each dense direction that are added."""
    direction_prompts: int = 64
    """Harmful and harmless prompts each for building the dense directions."""
    harmful_train: str = "bundled:harmful"
    harmless_train: str = "bundled:harmless"
    refusal_datasets: str = "bundled"
    refusal_limit: int | None = None
    max_new_tokens: int = 128
    capability_tasks: str = "mmlu_ll,truthfulqa_mc2"
    capability_limit: int | None = 100
    capability_shots: int = 5
    """MMLU-style exemplars per question (the paper: 5)."""
    kl_datasets: str = ""
    """Safe prompts whose unsteered answers measure each point's KL from the unsteered model
    ('' for none; see evaluate/kl.py)."""
    kl_limit: int | None = 24
    batch_size: int = EVAL_BATCH
    judge: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        from saesteer.steer.interventions import check_value

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            searched = [m for m in unknown if m in ("sae_add", "sae_ts")]
            raise SaesteerError(f"unknown sweep method(s) {', '.join(unknown)}; use {', '.join(METHODS)}"
                                + (f" ({', '.join(searched)} settings come from `saesteer search`: pass the spec it "
                                   "writes with --spec)" if searched else ""))
        if self.condition_scope is not None and self.condition_scope not in SCOPES:
            raise SaesteerError(f"unknown --condition-scope {self.condition_scope!r}; use {' or '.join(SCOPES)}")
        at_least(1, refusal_limit=self.refusal_limit, capability_limit=self.capability_limit,
                 max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                 direction_prompts=self.direction_prompts)
        at_least(0, capability_shots=self.capability_shots, direction_layer=self.direction_layer)
        for f in self.features:
            FeatureEdit(f)  # a latent index, checked like every edit
        for value in self.clamp_values:
            check_value(value, "sweep clamp")
        for value in self.direction_strengths:
            check_value(value, "sweep strength")
        for path in self.specs:
            SteeringSpec.load(path)   # a missing or broken --spec fails before the model and data load


@dataclass
class GridPoint:
    name: str
    method: str
    strength: float | None = None
    feature: int | None = None
    layer: int | None = None
    spec: SteeringSpec | None = field(default=None, repr=False)

    @property
    def family(self) -> str:
        """What the plots group by (see `spec_family`)."""
        return spec_family(self.spec.to_dict()) if self.method == "spec" and self.spec else self.method


def spec_family(body: dict[str, Any]) -> str:
    """A spec file's kind: steering with SAE latents or a dense vector, gated by a detector or not."""
    kind = "sae_spec" if any(i.get("sae") for i in body.get("interventions") or []) else "dense_spec"
    return f"{kind}_gated" if body.get("condition") else kind


def _family(out: Path, point: dict[str, Any]) -> str:
    """The family of a finished point; points written before families existed are read from their spec."""
    if point.get("family"):
        return point["family"]
    spec_file = out / "specs" / f"{point.get('name')}.yaml"
    if point.get("method") == "spec" and spec_file.exists():
        import yaml

        return spec_family(yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {})
    return point.get("method") or "spec"


def build_grid(lm: ChatModel, out: Path, config: SweepConfig) -> list[GridPoint]:
    """Write one steering spec per grid point (dense directions are computed once and saved)."""
    grid: list[GridPoint] = []
    specs = ensure_dir(out / "specs")
    discovery = _discovery(Path(config.discovery)) if config.discovery else None
    needs_sae = {"sae_clamp", "conditional_sae_clamp"} & set(config.methods)
    if needs_sae and discovery is None:
        raise SaesteerError("SAE methods need --discovery DIR (the output of saesteer discover)")
    if "none" in config.methods:
        grid.append(GridPoint("none", "none"))
    model = {"id": lm.model_id, "revision": lm.revision}
    if discovery is not None:
        # features.json and the discovery specs name the SAE relative to the discovery folder
        # (absolute in older ones); the sweep's specs name it relative to specs/ (see below).
        sae_path = (Path(config.discovery) / discovery["sae"]["path"]).resolve()
        sae_ref = FileRef(str(sae_path), discovery["sae"].get("sha256"))
        hook = discovery["sae"]["hook"]
        best = discovery["features"][0]
        features = config.features or (best["feature"],)
        values = config.clamp_values or tuple(round(best["best_value"] * m, 3) for m in (0.5, 1.0, 1.5))
        conditional = SteeringSpec.load(Path(config.discovery) / "conditional.yaml").with_paths(None)
        scoped = ""
        if config.condition_scope and conditional.condition is not None:
            conditional.condition.scope = config.condition_scope
            scoped = f"-{config.condition_scope}"
        for f in features:
            for v in values:
                interventions = [InterventionSpec(hook=hook, sae=sae_ref, features=[FeatureEdit(f, "clamp", v)])]
                if "sae_clamp" in config.methods:
                    spec = SteeringSpec(interventions=interventions, name=f"sae_clamp-{f}-{v:g}", model=model)
                    grid.append(GridPoint(spec.name, "sae_clamp", v, f, None, spec))
                if "conditional_sae_clamp" in config.methods:
                    spec = SteeringSpec(interventions=interventions, condition=conditional.condition,
                                        name=f"conditional_sae_clamp-{f}-{v:g}{scoped}", model=model)
                    grid.append(GridPoint(spec.name, "conditional_sae_clamp", v, f, None, spec))
    dense = [m for m in ("refusal_direction", "caa") if m in config.methods]
    if dense:
        layer = config.direction_layer
        if layer is None:
            from saesteer.hooks import hook_point

            if discovery is None:
                steered = sorted({hook_point(lm.model, i.hook).layer for path in config.specs
                                  for i in SteeringSpec.load(path).interventions})
                raise SaesteerError("dense baselines need --direction-layer (or --discovery to use the SAE's layer)"
                                    + (f"; the --spec files steer at layer {', '.join(map(str, steered))}"
                                       if steered else ""))

            layer = hook_point(lm.model, discovery["sae"]["hook"]).layer
        harmful = harmless = None
        for method in dense:
            # One file per method, so a sweep computes only the directions it uses.
            vectors_path = specs / f"{method}.safetensors"
            if not vectors_path.exists():
                if harmful is None:
                    n = config.direction_prompts
                    harmful = [r.text for r in load_records(config.harmful_train, limit=n, seed=config.seed)]
                    harmless = [r.text for r in load_records(config.harmless_train, limit=n, seed=config.seed)]
                if method == "refusal_direction":
                    vector = diff_of_means(lm, harmful, harmless, [layer], progress="refusal direction")[layer]
                else:
                    vector = caa_direction(lm, harmful + harmless, [layer], progress="CAA direction")[layer]
                save_vectors(vectors_path, {method: vector}, {"layer": str(layer), "harmful": config.harmful_train,
                                                              "harmless": config.harmless_train})
            for s in config.direction_strengths:
                spec = SteeringSpec(interventions=[InterventionSpec(
                    hook=f"{layer}", vector=FileRef(str(vectors_path.resolve()), key=method), op="add", value=s)],
                    name=f"{method}-L{layer}-{s:g}", model=model)
                grid.append(GridPoint(spec.name, method, s, None, layer, spec))
    for path in config.specs:
        spec = SteeringSpec.load(path).with_paths(None)
        name = spec.name or Path(path).stem
        if any(p.name == name for p in grid):
            raise SaesteerError(f"--spec {path} is named {name!r}, like another grid point; rename it in the file")
        grid.append(GridPoint(name, "spec", None, None, None, spec))
    for point in grid:
        if point.spec is not None:
            # Paths relative to specs/: the hash each run records survives moving the sweep folder.
            point.spec = point.spec.with_paths(specs)
            point.spec.save(specs / f"{point.name}.yaml")
    return grid


def _discovery(folder: Path) -> dict[str, Any]:
    """features.json of a discovery folder, with the fields the grid reads."""
    path = folder / "features.json"
    data = read_json(path)
    sae = data.get("sae") if isinstance(data, dict) else None
    features = data.get("features") if isinstance(data, dict) else None
    if not (isinstance(sae, dict) and isinstance(sae.get("path"), str) and isinstance(sae.get("hook"), str)
            and isinstance(features, list) and features and isinstance(features[0], dict)
            and isinstance(features[0].get("feature"), int) and isinstance(features[0].get("best_value"), (int, float))):
        raise SaesteerError(f"{path} is not a discovery result (needs sae.path, sae.hook and ranked features); "
                            "rerun saesteer discover into that folder")
    return data


def run_sweep(lm: ChatModel, out: str | Path, config: SweepConfig, *, progress: bool = True) -> list[dict[str, Any]]:
    from saesteer.evaluate.refusal import RefusalEvalConfig, answer_together, evaluate_refusal

    _check_data(config)
    out = ensure_dir(out)
    write_json(out / "sweep.json", {"config": asdict(config), "model": lm.describe()})
    grid = build_grid(lm, out, config)
    refusal = RefusalEvalConfig(datasets=config.refusal_datasets, limit=config.refusal_limit,
                                max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                judge=config.judge, seed=config.seed)
    # The ungated points' prompts share batches (the same answers, fewer and wider batches); a
    # gated point answers alone, after them.
    ungated = [p for p in grid if p.spec is None or p.spec.condition is None]
    if len(ungated) > 1:
        if progress:
            print(f"[sweep] answering the {len(ungated)} ungated points' prompts together", flush=True)
        answer_together(lm, [(out / "runs" / p.name / "refusal", p.spec) for p in ungated], refusal,
                        progress=progress)
    # the unsteered answers (build_grid puts `none` first), which a gated point takes for every
    # prompt its gate leaves alone
    unsteered = next((out / "runs" / p.name for p in grid if p.spec is None), None)
    for i, point in enumerate(grid):
        if progress:
            print(f"[sweep] {i + 1}/{len(grid)} {point.name}", flush=True)
        run_dir = out / "runs" / point.name
        evaluate_refusal(lm, run_dir / "refusal", refusal, point.spec, progress=progress,
                         unsteered=unsteered and unsteered / "refusal")
        if config.capability_tasks:
            _capability(lm, run_dir / "capability", config, point.spec, progress,
                        unsteered and unsteered / "capability")
        if config.kl_datasets and not (run_dir / "kl" / "summary.json").exists():
            from saesteer.evaluate.kl import KLConfig, harmless_kl

            kl = harmless_kl(lm, point.spec, KLConfig(datasets=config.kl_datasets, limit=config.kl_limit,
                                                      seed=config.seed), progress=progress)
            write_json(ensure_dir(run_dir / "kl") / "summary.json", kl)
        write_json(run_dir / "point.json", {"name": point.name, "method": point.method, "family": point.family,
                                            "strength": point.strength,
                                            "feature": point.feature, "layer": point.layer,
                                            "spec_hash": point.spec.hash() if point.spec else None})
    return collect(out)


def _check_data(config: SweepConfig) -> None:
    """The discovery, prompts and capability items load: a bad name or a dataset that is not on
    this machine fails before the sweep makes a folder or answers a prompt, not after a point."""
    from saesteer.evaluate import capability

    if config.discovery:
        _discovery(Path(config.discovery))
    if not load_records(config.refusal_datasets, limit=config.refusal_limit, seed=config.seed):
        raise SaesteerError(f"no prompts in {config.refusal_datasets}")
    if config.capability_tasks:
        cfg, data = _capability_config(config), capability.TaskData(None)
        for task in cfg.tasks:
            if not capability.task_items(task, cfg, data):
                raise SaesteerError(f"no items for capability task {task}")


def _capability_config(config: SweepConfig) -> Any:
    from saesteer.evaluate.capability import CapabilityConfig

    return CapabilityConfig(tasks=config.capability_tasks, limit=config.capability_limit, seed=config.seed,
                            mmlu_shots=config.capability_shots, batch_size=config.batch_size)


def _capability(lm: ChatModel, out: Path, config: SweepConfig, spec: SteeringSpec | None, progress: bool,
                unsteered: Path | None) -> None:
    from saesteer.evaluate import capability

    capability.evaluate_capability(lm, out, _capability_config(config), spec, progress=progress, unsteered=unsteered)


def _record(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise SaesteerError(f"{path} is a JSON {type(data).__name__}, not a run record; delete that run's folder "
                            "and rerun the sweep to redo it")
    return data


DERIVED = (("unsafe_refusal", "coherent_refusal", "unsafe_coherent_refusal"),
           ("unsafe_refusal", "broken", "unsafe_broken"), ("safe_over_refusal", "broken", "safe_broken"))
"""Answer-quality metrics read from each refusal summary: (summary key, part, metric name)."""


def collect(out: str | Path) -> list[dict[str, Any]]:
    """Rebuild the tidy table (one row per run x metric) from every finished run."""
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for point_file in sorted((out / "runs").glob("*/point.json")):
        point = _record(point_file)
        base = {k: point.get(k) for k in ("name", "method", "strength", "feature", "layer", "spec_hash")}
        base["family"] = _family(out, point)
        refusal = point_file.parent / "refusal" / "summary.json"
        if refusal.exists():
            s = _record(refusal)
            for key in ("unsafe_refusal", "safe_over_refusal"):
                if s.get(key):
                    rows.append({**base, "metric": key, "dataset": "all", **_value(s[key])})
            for key, part, metric in DERIVED:
                if (s.get(key) or {}).get(part):
                    rows.append({**base, "metric": metric, "dataset": "all", **_value(s[key][part])})
            for dataset, parts in s.get("datasets", {}).items():
                for key, v in parts.items():
                    rows.append({**base, "metric": key, "dataset": dataset, **_value(v)})
        kl_file = point_file.parent / "kl" / "summary.json"
        if kl_file.exists():
            kl = _record(kl_file)
            rows.append({**base, "metric": "harmless_kl", "dataset": "all",
                         **_value({"value": kl["mean_kl"], "ci95": kl.get("ci95"), "n": kl.get("n")})})
        capability_file = point_file.parent / "capability" / "summary.json"
        if capability_file.exists():
            c = _record(capability_file)
            for task, v in (c.get("tasks") or {}).items():
                rows.append({**base, "metric": task, "dataset": task, **_value(v.get("score", v))})
    write_text(out / "results.jsonl", "".join(__import__("json").dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    fields = ["name", "method", "family", "strength", "feature", "layer", "metric", "dataset", "value", "ci_low", "ci_high",
              "n", "spec_hash"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())
    return rows


def _value(stat: dict[str, Any]) -> dict[str, Any]:
    value = stat.get("rate", stat.get("accuracy", stat.get("value")))
    ci = stat.get("ci95") or [None, None]
    return {"value": value, "ci_low": ci[0], "ci_high": ci[1], "n": stat.get("n")}
