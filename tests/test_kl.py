"""KL from the unsteered model on harmless answers: zero without steering or when a gate stays
shut, positive and growing with the strength of an intervention, and in the sweep's table."""

import json

import pytest

from saesteer.evaluate.kl import KLConfig, harmless_kl
from saesteer.sae import TopKSAE, save_sae
from saesteer.steer import ConditionSpec, FeatureEdit, FileRef, InterventionSpec, SteeringSpec
from tests.tiny import tiny_model


@pytest.fixture()
def setup(tmp_path):
    lm = tiny_model("llama", layers=4, d=64)
    sae = TopKSAE.init(64, 128, 8, seed=3)
    sae.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, tmp_path / "sae")
    prompts = tmp_path / "safe.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"tell me about item {i}", "label": "safe"}) + "\n"
                               for i in range(6)))
    return lm, FileRef(str((tmp_path / "sae").resolve())), str(prompts)


def _spec(ref, value, condition=None):
    return SteeringSpec([InterventionSpec(hook="model.layers.1", sae=ref, features=[FeatureEdit(3, "add", value)])],
                        condition=condition)


def test_kl_is_zero_unsteered_and_grows_with_strength(setup):
    lm, ref, prompts = setup
    cfg = KLConfig(datasets=prompts, limit=None, max_new_tokens=6, batch_size=4)
    assert harmless_kl(lm, None, cfg, progress=False)["mean_kl"] == 0.0
    weak = harmless_kl(lm, _spec(ref, 2.0), cfg, progress=False)
    strong = harmless_kl(lm, _spec(ref, 20.0), cfg, progress=False)
    assert 0 < weak["mean_kl"] < strong["mean_kl"]
    assert weak["n"] == 6 and weak["ci95"][0] <= weak["mean_kl"] <= weak["ci95"][1]


def test_a_gate_that_never_fires_leaves_kl_at_zero(setup):
    lm, ref, prompts = setup
    shut = ConditionSpec(detector="sae_feature", hook="model.layers.1", sae=ref, feature=5, threshold=1e5)
    kl = harmless_kl(lm, _spec(ref, 20.0, shut), KLConfig(datasets=prompts, limit=None, max_new_tokens=6),
                     progress=False)
    assert kl["mean_kl"] == pytest.approx(0.0, abs=1e-9)
