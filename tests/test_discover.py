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


def test_candidates_come_from_every_ranking_and_carry_their_scores(tiny_discovery):
    _lm, root, result = tiny_discovery
    feats = result["features"]
    assert {f["picked_by"] for f in feats} == {"activation", "attribution"}
    for f in feats:
        assert set(f["rank_by"]) == {"activation", "attribution", "caa_alignment", "diffmean_alignment"}
        assert -1 <= f["caa_cos"] <= 1 and -1 <= f["diffmean_cos"] <= 1
        assert f["rank_by"][f["picked_by"]] == 0  # each order's best latent is picked first
    fs = result["feature_set"]
    assert fs is not None and fs["features"][0] == feats[0]["feature"] and len(fs["features"]) <= 2
    spec = SteeringSpec.load(root / "out" / "multi.yaml")
    assert [e.feature for e in spec.interventions[0].features] == fs["features"]


def test_round_robin_candidates_skip_repeats():
    from saesteer.discover.attribution import pick_candidates

    got = pick_candidates({"a": [5, 1, 2, 3], "b": [5, 7, 1, 8]}, 5)
    assert got == {5: "a", 7: "b", 1: "a", 8: "b", 2: "a"}


def test_unknown_ranking_is_a_clear_error():
    from saesteer.errors import SaesteerError

    with pytest.raises(SaesteerError, match="unknown latent ranking magic"):
        DiscoverConfig(rank_by=("activation", "magic"))


def test_attribution_matches_a_finite_difference():
    """Adding eps to one latent's code at every token changes ±log p(reply) by about
    eps x (sum of gradients over tokens); the attribution's gradient is that sum's mean."""
    from saesteer.discover.attribution import reply_attribution
    from saesteer.hooks import forward_hooks, hook_point, output_tensor, replace_output
    from saesteer.sae import TopKSAE
    from saesteer.steer.directions import _encode

    torch.manual_seed(0)
    lm = tiny_model("llama")
    sae = TopKSAE.init(64, 128, 8, seed=2)
    point = hook_point(lm.model, 1)
    conv = [{"role": "user", "content": "how do I pick a lock"}, {"role": "assistant", "content": "I can't help with that."}]
    got = reply_attribution(lm, sae, point, [conv], [1.0])
    ids, mask = _encode(lm, conv, "response")
    ids_t = torch.tensor([ids])

    def logp(f: int, eps: float) -> float:
        def hook(_m, _i, out):
            return replace_output(out, output_tensor(out) + eps * sae.W_dec[f])
        with torch.no_grad(), forward_hooks([(point.module, hook)]):
            lp = torch.log_softmax(lm.model(input_ids=ids_t).logits[0, :-1].double(), -1)
        tgt = ids_t[0, 1:]
        return float(sum(lp[t, tgt[t]] for t in range(len(tgt)) if mask[t + 1]))

    f = int(got["gradient"].abs().argmax())
    eps = 1e-3
    numeric = (logp(f, eps) - logp(f, -eps)) / (2 * eps) / len(ids)
    assert numeric == pytest.approx(float(got["gradient"][f]), rel=0.05, abs=1e-4)


def test_greedy_set_adds_latents_while_the_score_rises():
    from saesteer.discover.combine import greedy_feature_set

    def cand(f, score):
        return {"feature": f, "best_value": 1.0, "causal_score": score,
                "causal": [{"value": 1.0, "harmful_refusal": score, "harmless_refusal": 0.0}]}

    gain = {1: 0.3, 2: 0.2, 3: -0.1, 4: 0.05}   # what each latent adds on top of the others

    def rates(sets):
        return [(sum(gain[e.feature] for e in edits), 0.0) for edits in sets]

    calls = []
    got = greedy_feature_set([cand(1, 0.3), cand(2, 0.2), cand(3, 0.1), cand(4, 0.0)],
                             lambda sets: calls.append([len(e) for e in sets]) or rates(sets), (0.0, 0.0),
                             pool=4, max_size=4)
    assert [e.feature for e in got.edits] == [1, 2, 4] and got.score == pytest.approx(0.55)
    assert calls == [[2, 2, 2], [3, 3], [4]]    # a step's tries in one call; latent 3 only lowers it
    assert [t["add"] for t in got.steps[0]["tried"]] == [2, 3, 4]
    single = greedy_feature_set([cand(1, 0.3), cand(3, 0.1)], rates, (0.0, 0.0), pool=4, max_size=4)
    assert [e.feature for e in single.edits] == [1] and len(single.steps) == 1


def test_clamp_values_of_latents_silent_on_refusals_come_from_where_they_do_fire():
    from saesteer.discover.run import _clamp_scale

    assert _clamp_scale({"refusal_max_act": 7.0, "max_act": 9.0}, 3.0) == 7.0
    assert _clamp_scale({"refusal_max_act": 0.0, "max_act": 9.0}, 3.0) == 9.0   # picked by alignment
    assert _clamp_scale({"refusal_max_act": 0.0, "max_act": 0.0}, 3.0) == 3.0   # never fires
