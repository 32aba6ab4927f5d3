import json

import pytest
import torch

from saesteer.discover import DiscoverConfig, auroc, discover
from saesteer.steer import Steering, SteeringSpec
from tests.tiny import tiny_model


def test_auroc_matches_definition():
    pos = torch.tensor([[3.0, 0.0], [2.0, 1.0]])
    neg = torch.tensor([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0]])
    got = auroc(pos, neg)
    # feature 0: pairs (3>1,3>0,3>2,2>1,2>0,2=2) -> 5.5/6 ; feature 1: (0<1,0<2,0=0,1=1,1<2,1>0) -> 2/6
    torch.testing.assert_close(got, torch.tensor([5.5 / 6, 2.0 / 6]))


@pytest.fixture(scope="module")
def tiny_discovery(tmp_path_factory):
    from saesteer.sae import TopKSAE, save_sae

    lm = tiny_model("llama")
    sae = TopKSAE.init(64, 128, 8, seed=2)
    sae.metadata.update({"model_id": lm.model_id, "hf_hook_name": "model.layers.1", "layer": 1})
    root = tmp_path_factory.mktemp("disc")
    save_sae(sae, root / "sae")
    config = DiscoverConfig(n_rank=6, n_causal=3, n_candidates=2, max_new_tokens=6, causal_max_new_tokens=5,
                            causal_multipliers=(2.0,), judge="phrase", batch_size=8, n_contexts=2)
    from saesteer.sae import load_sae

    result = discover(lm, load_sae(root / "sae"), root / "out", config, sae_path=root / "sae", progress=False)
    return lm, root, result


def test_discovery_writes_ranked_features_page_and_specs(tiny_discovery):
    lm, root, result = tiny_discovery
    out = root / "out"
    data = json.loads((out / "features.json").read_text())
    assert data == json.loads(json.dumps(result))
    feats = data["features"]
    assert len(feats) == 2 and [f["rank"] for f in feats] == [0, 1]
    for f in feats:
        for key in ("refusal_auroc", "refusal_mean_diff", "refusal_freq_diff", "prompt_auroc", "causal_score",
                    "promoted_tokens", "suppressed_tokens", "contexts", "causal"):
            assert key in f
        assert 0 <= f["refusal_auroc"] <= 1 and len(f["promoted_tokens"]) == 10
    assert feats[0]["causal_score"] >= feats[1]["causal_score"]
    html = (out / "index.html").read_text()
    assert f"Feature {feats[0]['feature']}" in html
    for name in ("clamp.yaml", "conditional.yaml"):
        spec = SteeringSpec.load(out / name)
        Steering(lm, spec)  # resolves against the model: hook, SAE hash, feature ids
    assert SteeringSpec.load(out / "conditional.yaml").condition.calibration["target_fpr"] == 0.05
    # The probe detectors (sparse over latents, dense baseline): written and resolvable, or None.
    for name, kind in (("conditional_probe", "sae_probe"), ("conditional_dense_probe", "probe")):
        if data["probes"][name] is not None:
            spec = SteeringSpec.load(out / data["specs"][name])
            assert spec.condition.detector == kind and spec.condition.pooling == "mean"
            Steering(lm, spec)
            assert data["probes"][name]["calibration_fpr"] <= 0.5
        else:
            assert name not in data["specs"]
