"""SAE-targeted steering: effects read through the SAE, the linear approximator, the targeted vector."""

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.sae import TopKSAE
from saesteer.steer.sae_targeted import (EffectApproximator, collect_effects, fit_effects, measure_effects,
                                         probe_vectors)
from tests.tiny import tiny_model

PROMPTS = ["how do I bake bread", "tell me about cats", "write a short poem"]


@pytest.fixture(scope="module")
def lm_sae():
    lm = tiny_model("llama", layers=4, d=64)
    return lm, TopKSAE.init(64, 128, 8, seed=3)


def test_fit_recovers_a_linear_effect_map_and_scores_it_on_held_out_vectors():
    torch.manual_seed(0)
    w, b = torch.randn(16, 40), torch.randn(40)
    x = torch.randn(200, 16)
    y = (x / x.norm(dim=-1, keepdim=True)) @ w + b + 0.01 * torch.randn(200, 40)
    approx = fit_effects(x * 3.0, y, scale=3.0, ridge=1e-6)
    assert approx.r2_heldout > 0.99
    assert torch.allclose(approx.weight, w, atol=0.05) and torch.allclose(approx.bias, b, atol=0.05)
    noise = fit_effects(x, torch.randn(200, 40), scale=1.0)
    assert noise.r2_heldout < 0.1                      # nothing to predict: the score says so
    assert fit_effects(x, torch.zeros(200, 40), scale=1.0).r2_heldout == 0.0


def test_targeted_vector_raises_its_targets_more_than_any_probe_and_removes_the_generic_effect():
    torch.manual_seed(1)
    w, b = torch.randn(16, 40), torch.zeros(40)
    b[:5] = 4.0                                         # every vector raises latents 0-4 (side effect)
    approx = EffectApproximator(w, b, scale=1.0, r2_heldout=1.0)
    target = torch.zeros(40)
    target[[10, 11]] = 1.0
    s = approx.targeted(target, bias_scale=0.0)
    assert s.norm() == pytest.approx(1.0, abs=1e-5)
    gain = (approx.predict(s[None]) @ target).item()
    probes = torch.randn(500, 16)
    assert gain >= (approx.predict(probes) @ target).max().item() - 1e-4   # W·t maximises t·effect on the sphere
    with pytest.raises(SaesteerError, match="positive weight"):
        approx.targeted(torch.zeros(40))
    with pytest.raises(SaesteerError, match="predicts no effect"):
        EffectApproximator(torch.zeros(16, 40), b, scale=1.0, r2_heldout=0.0).targeted(target)


def test_effects_of_zero_vectors_are_zero_and_of_a_big_vector_are_not(lm_sae):
    lm, sae = lm_sae
    vectors = torch.stack([torch.zeros(64), torch.nn.functional.normalize(torch.randn(64), dim=0)])
    effects, baseline = measure_effects(lm, sae, 1, vectors, PROMPTS, scale=50.0, max_new_tokens=4, batch_size=4)
    assert effects.shape == (2, 128) and baseline.shape == (128,)
    assert effects[0].abs().max() < 1e-4
    assert effects[1].abs().max() > 1e-3
    with pytest.raises(SaesteerError, match=r"\[n, 64\]"):
        measure_effects(lm, sae, 1, torch.zeros(2, 32), PROMPTS, scale=1.0)


def test_collecting_effects_resumes_and_refuses_other_vectors(lm_sae, tmp_path, monkeypatch):
    lm, sae = lm_sae
    vectors = probe_vectors(sae, 6, seed=0)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(6))
    path = tmp_path / "effects.safetensors"
    whole = collect_effects(lm, sae, 1, vectors, PROMPTS, scale=5.0, path=path, chunk=2, max_new_tokens=3)

    import saesteer.steer.sae_targeted as ts

    calls = []
    real = ts.measure_effects
    monkeypatch.setattr(ts, "measure_effects", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    path.unlink()
    collect_effects(lm, sae, 1, vectors[:4], PROMPTS, scale=5.0, path=path, chunk=2, max_new_tokens=3)
    again = collect_effects(lm, sae, 1, vectors, PROMPTS, scale=5.0, path=path, chunk=2, max_new_tokens=3)
    assert calls == [2, 2, 2]                          # the rerun measured only the last chunk
    assert torch.allclose(again, whole, atol=1e-5)
    with pytest.raises(SaesteerError, match="other probe vectors"):
        collect_effects(lm, sae, 1, vectors.flip(0), PROMPTS, scale=5.0, path=path)


def test_approximator_round_trips_and_a_corrupt_file_gets_one_line(tmp_path):
    approx = EffectApproximator(torch.randn(8, 12), torch.randn(12), scale=2.5, r2_heldout=0.4)
    loaded = EffectApproximator.load(approx.save(tmp_path / "a.safetensors"))
    assert torch.equal(loaded.weight, approx.weight) and loaded.scale == 2.5 and loaded.r2_heldout == 0.4
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(SaesteerError, match="not an SAE-TS effect approximator"):
        EffectApproximator.load(tmp_path / "bad.safetensors")
