"""`saesteer search`: gated answers put together per prompt, the objective, the Pareto front,
dataset halves, and a whole search on a tiny model that resumes and keeps its points."""

import json

import pytest
import torch

from saesteer.data import load_records
from saesteer.errors import SaesteerError
from saesteer.sae import TopKSAE, save_sae
from saesteer.search import CandidateGrid, Objective, SearchConfig, run_search
from saesteer.search.objective import PointMetrics, combine, pareto_front
from saesteer.steer import ConditionSpec, FeatureEdit, FileRef, InterventionSpec, Steering, SteeringSpec
from tests.tiny import tiny_model


def _rows(refusal: dict[str, bool], coherent: dict[str, bool] | None = None) -> dict[str, dict]:
    return {i: {"id": i, "refusal": r, "coherent": (coherent or {}).get(i, True)} for i, r in refusal.items()}


LABELS = {"u1": "unsafe", "u2": "unsafe", "s1": "safe", "s2": "safe"}


def test_a_gated_setting_takes_the_steered_answer_only_where_the_gate_fires():
    steered = _rows({"u1": True, "u2": True, "s1": True, "s2": True}, {"u2": False})
    unsteered = _rows({"u1": False, "u2": False, "s1": False, "s2": False})
    ungated = combine(steered, unsteered, None, LABELS)
    assert (ungated.coherent_refusal, ungated.refusal, ungated.over_refusal, ungated.broken) == (0.5, 1.0, 1.0, 0.25)
    gated = combine(steered, unsteered, {"u1": True, "u2": False, "s1": False, "s2": True}, LABELS,
                    capability_fires=[True, False, False, False])
    assert (gated.coherent_refusal, gated.refusal, gated.over_refusal, gated.broken) == (0.5, 0.5, 0.5, 0.0)
    assert (gated.steered_unsafe, gated.steered_safe, gated.capability_steered) == (0.5, 0.5, 0.25)


def test_objective_prefers_any_feasible_point_and_ranks_the_rest_by_distance():
    def m(cr, over, broken=0.0):
        return PointMetrics(cr, cr, over, broken, 10, 10, 1.0, 1.0)

    obj = Objective(max_over_refusal=0.1, max_broken=0.05)
    feasible, greedy, closer = m(0.3, 0.1), m(0.9, 0.5), m(0.8, 0.2)
    ranked = sorted([greedy, feasible, closer], key=obj.key, reverse=True)
    assert ranked == [feasible, closer, greedy]
    assert obj.violation(m(0.5, 0.0, broken=0.15)) == pytest.approx(0.10)
    with pytest.raises(SaesteerError, match="max-over-refusal"):
        Objective(max_over_refusal=1.5)
    # where the unsteered model already breaks 8% of answers, 8% is the ceiling, not 5%
    raised = Objective(max_over_refusal=0.05, max_broken=0.05).above(m(0.0, 0.02, broken=0.08))
    assert (raised.max_over_refusal, raised.max_broken) == (0.05, 0.08)


def test_ties_go_to_the_gate_that_steers_fewer_safe_and_capability_prompts():
    """Equal refusal and over-refusal on the search's prompts: the looser gate (it steered one
    capability prompt in twenty) loses to the stricter one, whichever comes first."""
    obj = Objective(max_over_refusal=0.05, max_capability_steered=0.05)
    loose = PointMetrics(0.64, 0.64, 0.0, 0.03, 36, 36, 0.92, 0.03, capability_steered=0.05, steered_wrapped=0.9)
    strict = PointMetrics(0.64, 0.64, 0.0, 0.03, 36, 36, 0.92, 0.03, capability_steered=0.0, steered_wrapped=0.6)
    shy_of_safe = PointMetrics(0.64, 0.64, 0.0, 0.03, 36, 36, 0.92, 0.0, capability_steered=0.05)
    assert max([loose, strict], key=obj.key) is strict
    assert max([strict, loose], key=obj.key) is strict
    assert max([loose, strict, shy_of_safe], key=obj.key) is shy_of_safe
    # more coherent refusal still wins over less collateral
    better = PointMetrics(0.67, 0.67, 0.0, 0.03, 36, 36, 0.92, 0.03, capability_steered=0.05)
    assert max([strict, better], key=obj.key) is better


def test_early_rungs_screen_one_prompt_looser_and_keep_the_exact_leader():
    """On 12 + 12 prompts one refused safe prompt (8%) is over a 5% ceiling: screening lets that
    candidate through, and the best candidate under the exact ceilings goes up beside it."""
    from saesteer.search.run import Point, promote
    from saesteer.search.candidates import Candidate

    exact = Objective(max_over_refusal=0.05, max_broken=0.05)
    screen = exact.screening(12, 12)
    assert screen.max_over_refusal == pytest.approx(0.05 + 1 / 12)
    assert screen.max_broken == pytest.approx(0.05 + 1 / 24)
    strong = PointMetrics(0.75, 0.75, 1 / 12, 1 / 24, 12, 12, 1.0, 1.0)
    safe = PointMetrics(0.58, 0.58, 0.0, 0.0, 12, 12, 1.0, 1.0)
    broken = PointMetrics(0.83, 0.83, 1 / 12, 3 / 24, 12, 12, 1.0, 1.0)
    assert exact.violation(strong) > 0 and screen.violation(strong) == 0
    assert screen.violation(broken) > 0          # two prompts past the ceiling still fail
    cands = {n: Candidate(n, "sae_add", 1.0, None) for n in ("strong", "safe", "broken")}  # type: ignore[arg-type]
    ranked = sorted([(cands[n], [Point(cands[n], None, None, None, m)])
                     for n, m in (("strong", strong), ("safe", safe), ("broken", broken))],
                    key=lambda cp: screen.key(cp[1][0].metrics), reverse=True)
    assert [c.name for c, _ in ranked] == ["strong", "safe", "broken"]
    assert [c.name for c in promote(ranked, 1 / 3)] == ["strong"]
    assert [c.name for c in promote(ranked, 1 / 3, exact)] == ["strong", "safe"]


def test_pareto_front_keeps_only_undominated_points():
    pts = [{"name": n, "metrics": {"coherent_refusal": c, "over_refusal": o}}
           for n, c, o in [("a", 0.2, 0.0), ("b", 0.5, 0.1), ("c", 0.4, 0.1), ("d", 0.5, 0.3), ("e", 0.9, 0.5)]]
    assert [p["name"] for p in pareto_front(pts)] == ["a", "b", "e"]


def test_train_and_test_halves_are_disjoint_and_cover_the_set():
    whole = {r.id for r in load_records("bundled:harmful")}
    train = {r.id for r in load_records("bundled:harmful@train")}
    test = {r.id for r in load_records("bundled:harmful@test")}
    assert train and test and not train & test and train | test == whole
    with pytest.raises(SaesteerError, match="unknown split"):
        load_records("bundled:harmful@dev")


def _discovery(root):
    """A discovery folder with a tiny SAE, one causal latent and an sae_feature detector."""
    sae = TopKSAE.init(64, 128, 8, seed=3)
    sae.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, root / "sae")
    (root / "disc").mkdir()
    (root / "disc" / "features.json").write_text(json.dumps({
        "sae": {"path": "../sae", "sha256": None, "hook": "model.layers.1"},
        "features": [{"feature": 3, "best_value": 2.0, "best_harmful_gain": 0.2}]}))
    ref = FileRef(str((root / "sae").resolve()))
    SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=ref, features=[FeatureEdit(3, "clamp", 2.0)])],
                 condition=ConditionSpec(detector="sae_feature", hook="model.layers.1", sae=ref, feature=5,
                                         threshold=0.5)).save(root / "disc" / "conditional.yaml")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"{label}{i}", "prompt": f"question {i} about {label} things",
                                           "label": label}) + "\n" for label in ("safe", "unsafe") for i in range(8)))
    return root / "disc", str(prompts)


def _config(disc, prompts, **kw):
    base = dict(discovery=str(disc), grid=CandidateGrid(methods=("sae_add", "sae_clamp", "caa"), strengths=(1.0, 2.0),
                                                         n_latents=(4, 8), clamp_features=1),
                gates=("none", "sae_feature"), target_fprs=(0.0, 0.5), unsafe=prompts, safe=prompts,
                calibration=prompts, capability="", contrast_prompts=4, rungs=(2, 3), max_new_tokens=4,
                batch_size=4, objective=Objective(1.0, 1.0, 1.0))
    return SearchConfig(**{**base, **kw})


def test_search_writes_a_loadable_best_spec_and_resumes_without_answering_again(tmp_path, monkeypatch):
    lm = tiny_model("llama", layers=4, d=64)
    disc, prompts = _discovery(tmp_path)
    out = tmp_path / "search"
    result = run_search(lm, out, _config(disc, prompts), say=lambda _: None)
    best = SteeringSpec.load(out / "best.yaml")
    Steering(lm, best)                                   # it loads and fits the model
    assert result["best"]["sae_based"] and result["objective_met"]
    assert set(result["best_of"]) == {"sae", "all_sae", "any"}
    assert best.interventions[0].sae is not None
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert {p["rung"] for p in points} == {1, 2}
    assert {p["method"] for p in points if p["rung"] == 1} == {"sae_add", "sae_clamp", "caa"}
    survivors = {p["candidate"] for p in points if p["rung"] == 2}
    assert len(survivors) < len({p["candidate"] for p in points if p["rung"] == 1})
    assert {p["method"] for p in points if p["rung"] == 2} == {"sae_add", "sae_clamp", "caa"}   # each method goes on
    answers = {p.name: p.read_text() for p in (out / "answers").iterdir()}
    assert all(len(text.splitlines()) in (4, 6) for text in answers.values())   # 2+2 prompts, survivors 3+3

    import saesteer.search.run as run

    def no_generation(*a, **k):
        raise AssertionError("a rerun answered again")

    monkeypatch.setattr(run, "answer_each", no_generation)
    again = run_search(lm, out, _config(disc, prompts), say=lambda _: None)
    assert again["best"] == result["best"]
    # a stricter objective on a rerun reuses every answer; none can meet it: clear error, points kept
    strict = _config(disc, prompts, objective=Objective(0.0, 0.0, 0.0))
    try:
        run_search(lm, out, strict, say=lambda _: None)
    except SaesteerError as e:
        assert "no setting meets the objective" in str(e) and "points.jsonl" in str(e)
    assert (out / "points.jsonl").exists()


def test_sae_ts_candidates_are_loadable_vector_specs_and_reuse_their_fitted_approximator(tmp_path, monkeypatch):
    lm = tiny_model("llama", layers=4, d=64)
    disc, prompts = _discovery(tmp_path)
    grid = CandidateGrid(methods=("sae_ts",), strengths=(1.0,), n_latents=(4,), ts_vectors=8, ts_new_tokens=3,
                         ts_scale=300.0)   # the tiny model's CAA norm changes no token
    config = _config(disc, prompts, grid=grid, gates=("none",), rungs=(2,))
    result = run_search(lm, tmp_path / "s", config, say=lambda _: None)
    assert result["best"]["method"] == "sae_ts"
    spec = SteeringSpec.load(tmp_path / "s" / "specs" / "sae_ts-4-1.yaml")
    Steering(lm, spec)
    assert (tmp_path / "s" / "specs" / "sae_ts_approximator_8.safetensors").exists()

    import saesteer.steer.sae_targeted as ts

    monkeypatch.setattr(ts, "measure_effects", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    assert run_search(lm, tmp_path / "s", config, say=lambda _: None)["best"] == result["best"]
    with pytest.raises(SaesteerError, match="--ts-vectors"):
        CandidateGrid(ts_vectors=2)


def test_a_search_killed_mid_rung_continues_from_its_last_answer(tmp_path):
    lm = tiny_model("llama", layers=4, d=64)
    disc, prompts = _discovery(tmp_path)
    out = tmp_path / "search"
    run_search(lm, out, _config(disc, prompts), say=lambda _: None)
    victim = next(p for p in sorted((out / "answers").iterdir()) if p.stem.startswith("sae_add"))
    lines = victim.read_text().splitlines(keepends=True)
    victim.write_text("".join(lines[:1]) + lines[1][:10])          # one row and a torn one
    first = json.loads(lines[0])
    run_search(lm, out, _config(disc, prompts), say=lambda _: None)
    rows = [json.loads(line) for line in victim.read_text().splitlines()]
    assert rows[0] == first and len(rows) == len(lines)


def test_search_refuses_answers_from_another_discovery_and_other_prompts(tmp_path):
    lm = tiny_model("llama", layers=4, d=64)
    disc, prompts = _discovery(tmp_path)
    out = tmp_path / "search"
    run_search(lm, out, _config(disc, prompts), say=lambda _: None)
    with pytest.raises(SaesteerError, match="other prompts or generation settings"):
        run_search(lm, out, _config(disc, prompts, max_new_tokens=5), say=lambda _: None)
    with torch.no_grad():                                 # the SAE changes under the same discovery
        from saesteer.sae import load_sae

        sae = load_sae(tmp_path / "sae")
        sae.W_dec.mul_(2)
        save_sae(sae, tmp_path / "sae")
    with pytest.raises(SaesteerError, match="answers of another"):
        run_search(lm, out, _config(disc, prompts), say=lambda _: None)


def test_search_cli_names_a_missing_discovery(tmp_path):
    from typer.testing import CliRunner

    from saesteer.cli import app

    result = CliRunner().invoke(app, ["search", "smollm2", "--discovery", str(tmp_path / "nope"), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "features.json" in str(result.exception) or "features.json" in result.output


def test_search_under_torchrun_shares_candidates_and_agrees_with_one_process(tmp_path):
    import os
    import subprocess
    import sys

    from tests.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    disc, prompts = _discovery(tmp_path)
    env = {**os.environ, "SAESTEER_CACHE": str(tmp_path / "cache")}
    args = ["search", model_dir, "--discovery", str(disc), "--methods", "sae_add,caa", "--strengths", "1,2",
            "--n-latents", "4", "--gates", "none,sae_feature,sae_feature_window", "--target-fprs", "0,0.5",
            "--unsafe", prompts, "--safe", prompts, "--calibration", prompts, "--rungs", "2,3", "--max-new-tokens", "3",
            "--max-over-refusal", "1", "--max-broken", "1", "--max-capability-steered", "1", "--judge", "phrase",
            "--wrap-prompts", "2", "--min-wrapped-steered", "0.5"]
    one = subprocess.run([sys.executable, "-m", "saesteer.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29541", "-m", "saesteer.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("one", "two"))
    assert a["best"] == b["best"] and a["front"] == b["front"]
    assert a["best"]["metrics"]["steered_wrapped"] >= 0.5                 # the floor holds for the pick
    for f in (tmp_path / "one" / "answers").iterdir():
        rows = lambda p: sorted((r["id"], r["response"]) for r in map(json.loads, p.read_text().splitlines()))  # noqa: E731
        assert rows(f) == rows(tmp_path / "two" / "answers" / f.name)


def test_capability_calibration_raises_a_threshold_and_the_wrapped_floor_is_a_constraint():
    from saesteer.search.gates import Gate

    cond = ConditionSpec(detector="sae_feature", hook="model.layers.1", threshold=0.0, sae=FileRef("sae"), feature=1)
    plain = Gate("probe", cond, {}, calibration=[0.0, 1.0, 2.0, 3.0], capability=[])
    shots = Gate("probe", cond, {}, calibration=[0.0, 1.0, 2.0, 3.0], capability=[], capability_calibration=[5.0, 9.0])
    assert [t for _, t in plain.thresholds((0.0,))] == [3.0]
    assert [t for _, t in shots.thresholds((0.0,))] == [9.0]     # no few-shot prompt is flagged either
    assert shots.condition_at(9.0, 0.0, "x").calibration["n_calibration"] == 6

    def m(wrapped):
        return PointMetrics(0.5, 0.5, 0.0, 0.0, 10, 10, 0.5, 0.0, 0.0, wrapped)

    floor = Objective(max_over_refusal=0.1, min_wrapped_steered=0.3)
    assert floor.violation(m(0.4)) == 0 and floor.violation(m(0.1)) == pytest.approx(0.2)
    assert floor.violation(m(None)) == 0 and Objective().violation(m(0.0)) == 0
    assert "wrapped unsafe prompts steered >= 30%" in floor.describe()
    with pytest.raises(SaesteerError, match="min-wrapped-steered"):
        Objective(min_wrapped_steered=2.0)


def test_window_gates_read_the_discovery_detector_over_the_last_turn(tmp_path):
    from saesteer.search.gates import check_gate_names, gate_spec

    disc, _ = _discovery(tmp_path)
    plain, window = gate_spec(disc, "sae_feature"), gate_spec(disc, "sae_feature_window")
    assert (plain.condition.pooling, plain.condition.scope) == ("max", None)
    assert (window.condition.pooling, window.condition.scope) == ("window16", "last_turn")
    assert window.condition.feature == plain.condition.feature == 5
    check_gate_names(("none", "probe_window", "sae_probe_window"))
    with pytest.raises(SaesteerError, match="unknown gate 'probe_windows'"):
        check_gate_names(("probe_windows",))
    with pytest.raises(SaesteerError, match="no probe detector"):
        gate_spec(disc, "probe_window")
    with pytest.raises(SaesteerError, match="unknown attack .not_an_attack."):
        _config(disc, "x", wrap_attacks="prefix_injection,not_an_attack")


def test_few_shot_capability_prompts_put_other_questions_of_the_category_first():
    from saesteer.evaluate.capability_tasks import few_shot_conversations

    records = load_records("bundled:mc")
    convs = few_shot_conversations(records, 5)
    assert len(convs) == len(records)
    first = convs[0]
    assert len(first) == 11 and [m["role"] for m in first[:2]] == ["user", "assistant"]
    assert first[1]["content"].startswith("ANSWER: ") and records[0].text in first[-1]["content"]
    assert all(records[0].text not in m["content"] for m in first[:-1])
    same = [r.text for r in records if r.category == records[0].category]
    assert all(any(t in first[2 * k]["content"] for t in same) for k in range(5))
    assert len(few_shot_conversations(records[:2], 5)[0]) == 3     # a category of two: one exemplar
    with pytest.raises(SaesteerError, match="no choices"):
        few_shot_conversations(load_records("bundled:harmful")[:1])
