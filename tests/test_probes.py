"""Sparse probes over SAE latents: fitting, calibration on held-out prompts, and the detector
that scores exactly what the probe was fitted on."""

from __future__ import annotations

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.steer.conditions import SAEProbeDetector, pool
from saesteer.steer.probes import fit_sparse_probe, split


def _codes(n: int, signal: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 32, generator=g).relu() * 0.3
    z[:, 5] += signal          # latent 5 carries the class
    return z


def test_probe_keeps_few_latents_and_calibrates_on_held_out_prompts():
    harmful, harmless = _codes(40, 2.0, 0), _codes(40, 0.0, 1)
    probe = fit_sparse_probe(harmful, harmless, target_fpr=0.05, c=0.1)
    latents = probe.latents()
    assert latents[0]["feature"] == 5 and latents[0]["weight"] > 0
    assert len(latents) < 32
    cal = probe.calibration
    assert cal["n_fit"][0] + cal["n_calibration"][0] == 40 and cal["n_calibration"][0] >= 10
    assert cal["calibration_fpr"] <= 0.05 and cal["calibration_tpr"] == 1.0


def test_split_is_seeded_and_disjoint():
    a, b = split(10, 0.3, seed=3)
    assert (a, b) == split(10, 0.3, seed=3) and not set(a) & set(b) and len(a) + len(b) == 10


def test_probe_that_cannot_separate_says_so():
    same = _codes(20, 0.0, 0)
    with pytest.raises(SaesteerError, match="kept no latent|never fires"):
        fit_sparse_probe(same, same.clone(), c=0.001)
    with pytest.raises(SaesteerError, match="at least 4 harmful"):
        fit_sparse_probe(same[:2], same)


def test_detector_with_mean_pooling_scores_the_probe_logit():
    from saesteer.sae import TopKSAE

    sae = TopKSAE.init(16, 32, 4, seed=0)
    weight = torch.zeros(32)
    weight[[3, 7]] = torch.tensor([0.8, -0.5])
    detector = SAEProbeDetector(sae, weight, bias=-0.2)
    x = torch.randn(6, 16)
    scores = detector.token_scores(x)
    codes = sae.encode(x).float()
    torch.testing.assert_close(scores, codes @ weight - 0.2)
    mask = torch.tensor([[False, True, True, True, True, False]])
    pooled = pool(scores[None], mask, "mean")
    torch.testing.assert_close(pooled, (codes[1:5].mean(0) @ weight - 0.2)[None])
    with pytest.raises(SaesteerError, match="refit the probe"):
        SAEProbeDetector(sae, torch.zeros(31), 0.0)


def test_sae_probe_spec_steers_only_the_prompts_it_flags(tmp_path):
    """A spec with an `sae_probe` condition resolves, round-trips, and gates rows by the probe."""
    from saesteer.generate import GenerationConfig, generate
    from saesteer.sae import TopKSAE, save_sae
    from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, Steering, SteeringSpec
    from saesteer.steer.probes import SparseProbe, sparse_probe_condition
    from tests.tiny import tiny_model

    lm = tiny_model("llama")
    sae = TopKSAE.init(64, 128, 8, seed=2)
    sae.metadata.update({"model_id": lm.model_id, "hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, tmp_path / "sae")
    ref = FileRef(str(tmp_path / "sae"))
    edit = [InterventionSpec(hook="model.layers.1", sae=ref, features=[FeatureEdit(3, "add", 50.0)])]
    weight = torch.zeros(128)
    weight[:8] = 1.0
    for threshold, fired in ((-1e6, True), (1e6, False)):   # fires on every prompt / on none
        probe = SparseProbe(weight, 0.0, threshold)
        cond = sparse_probe_condition(probe, "model.layers.1", ref, tmp_path / "w.safetensors")
        spec = SteeringSpec(interventions=edit, condition=cond)
        spec.save(tmp_path / "spec.yaml")
        loaded = SteeringSpec.load(tmp_path / "spec.yaml")
        assert loaded.condition.detector == "sae_probe"
        steering = Steering(lm, loaded)
        cfg = GenerationConfig(max_new_tokens=4)
        with steering.active():
            steered = generate(lm, ["hello there", "how are you"], cfg)
        assert steering.gate.decisions == {0: fired, 1: fired}
        plain = generate(lm, ["hello there", "how are you"], cfg)
        assert ([s.text for s in steered] == [p.text for p in plain]) is (not fired)


def test_detector_rates_per_dataset_through_the_cli(tmp_path, monkeypatch):
    """`saesteer eval detector` reads a conditional spec and writes firing rates per dataset."""
    import json

    from typer.testing import CliRunner

    from saesteer.cli import app
    from saesteer.sae import TopKSAE, save_sae
    from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, SteeringSpec
    from saesteer.steer.probes import SparseProbe, sparse_probe_condition
    from tests.tiny import tiny_model

    lm = tiny_model("llama")
    monkeypatch.setattr("saesteer.models.load_model", lambda *a, **k: lm)
    sae = TopKSAE.init(64, 128, 8, seed=2)
    sae.metadata.update({"model_id": lm.model_id, "hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, tmp_path / "sae")
    ref = FileRef(str(tmp_path / "sae"))
    weight = torch.zeros(128)
    weight[:8] = 1.0
    cond = sparse_probe_condition(SparseProbe(weight, 0.0, -1e6), "model.layers.1", ref, tmp_path / "w.safetensors")
    SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=ref, features=[FeatureEdit(3, "add", 5.0)])],
                 condition=cond).save(tmp_path / "spec.yaml")
    result = CliRunner().invoke(app, ["eval", "detector", "tiny", "--steer", str(tmp_path / "spec.yaml"),
                                      "--out", str(tmp_path / "det"), "--dataset", "bundled:harmful,bundled:harmless",
                                      "--limit", "3", "--five-shot", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert summary["detector"] == "sae_probe"
    assert summary["true_positive_rate"]["k"] == 3 and summary["false_positive_rate"]["k"] == 3   # always fires
    assert set(summary["groups"]) == {"bundled:harmful:unsafe", "bundled:harmless:safe"}


def test_sparse_probe_strength_is_chosen_on_the_fitting_prompts():
    from saesteer.steer.probes import L1_GRID

    probe = fit_sparse_probe(_codes(40, 2.0, 0), _codes(40, 0.0, 1))
    assert probe.calibration["C"] in L1_GRID and probe.calibration["penalty"] == "l1"


def test_sparse_probe_does_not_depend_on_numpys_global_random_state():
    """liblinear shuffles with a seed it draws from numpy when given none: the chosen C and the
    weights (so the demo's gate and pick) changed from run to run."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    harmful = torch.relu(torch.randn(40, 300, generator=g) + torch.linspace(0, 0.8, 300))
    harmless = torch.relu(torch.randn(40, 300, generator=g))
    probes = []
    for state in (1, 2, 3):
        np.random.seed(state)
        probes.append(fit_sparse_probe(harmful, harmless))
    assert len({p.calibration["C"] for p in probes}) == 1
    assert all(torch.equal(probes[0].weight, p.weight) and probes[0].threshold == p.threshold for p in probes)


def test_detector_scores_stop_early_and_equal_what_the_steered_run_decides_by(tmp_path):
    """Scoring several detectors in one pass that stops after the deepest gives, per prompt, the
    score each gate records when the steered model answers in full (prompts of mixed lengths,
    a conversation, a window over the last turn, a detector deeper than the steered layer)."""
    from saesteer.evaluate.detector import detector_scores, detectors_scores
    from saesteer.generate import GenerationConfig, generate
    from saesteer.steer import ConditionSpec, FileRef, InterventionSpec, Steering, SteeringSpec
    from saesteer.steer.directions import save_vectors
    from tests.tiny import tiny_model

    lm = tiny_model("llama", layers=4, d=64)
    g = torch.Generator().manual_seed(0)
    save_vectors(tmp_path / "v.safetensors", {"probe": torch.randn(64, generator=g), "dir": torch.randn(64, generator=g)})
    edit = [InterventionSpec(hook="model.layers.1", vector=FileRef(str(tmp_path / "v.safetensors"), key="dir"),
                             op="add", value=4.0)]
    specs = [SteeringSpec(interventions=edit, condition=ConditionSpec(
        detector="probe", hook=f"model.layers.{layer}", vector=FileRef(str(tmp_path / "v.safetensors"), key="probe"),
        bias=0.1, threshold=0.0, pooling=pooling, scope=scope))
        for layer, pooling, scope in ((1, "mean", None), (3, "window4", "last_turn"), (2, "max", None))]
    prompts = ["hi", "a somewhat longer question about the weather in spring and autumn",
               [{"role": "user", "content": "first turn, quite long " * 5}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "and the last turn"}], "short one"]
    together = detectors_scores(lm, specs, prompts, batch_size=3)
    for spec, scores in zip(specs, together):
        steering = Steering(lm, spec)
        with steering.active():
            generate(lm, prompts, GenerationConfig(max_new_tokens=3, batch_size=8))
        torch.testing.assert_close(torch.tensor(scores), torch.tensor([steering.gate.scores[i] for i in range(4)]))
        assert detector_scores(lm, spec, prompts, batch_size=2) == pytest.approx(scores, abs=1e-5)


def test_five_shot_prompts_come_from_mmlu_where_the_data_directory_holds_it_else_the_bundled_set(tmp_path):
    from saesteer.data.sources import set_data_dir
    from saesteer.errors import SaesteerError
    from saesteer.evaluate.detector import DetectorEvalConfig, five_shot_bundled

    convs = five_shot_bundled(3, seed=0)
    assert len(convs) == 3 and all(len(c) == 11 and c[-1]["role"] == "user" for _, c in convs)  # 5 answered + 1
    assert five_shot_bundled(3, seed=0) == convs
    try:
        set_data_dir(tmp_path)
        assert DetectorEvalConfig().five_shot_source() == "bundled"
        (tmp_path / "mmlu").mkdir()
        assert DetectorEvalConfig().five_shot_source() == "mmlu"
        assert DetectorEvalConfig(five_shot_from="bundled").five_shot_source() == "bundled"
    finally:
        set_data_dir(None)
    with pytest.raises(SaesteerError, match="unknown five-shot source 'mmlux'; use auto, mmlu, bundled"):
        DetectorEvalConfig(five_shot_from="mmlux")
