"""Metrics: reconstruction sums, and the spliced model with an exact and a useless SAE."""

import pytest
import torch

from saesteer.sae import ReluSAE, TopKSAE
from saesteer.sae.metrics import evaluate_sae, reconstruction_metrics, spliced_metrics
from tests.tiny import tiny_model


def exact_sae(d: int, layer: int) -> ReluSAE:
    """relu(x) - relu(-x) = x: a ReLU SAE with [I, -I] that reconstructs perfectly."""
    sae = ReluSAE(d, 2 * d, metadata={"layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post"})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_reconstruction_metrics_match_direct_computation():
    torch.manual_seed(0)
    sae = TopKSAE.init(16, 64, 4, seed=0).requires_grad_(False)
    x = torch.randn(300, 16) * 2 + 1
    m = reconstruction_metrics(sae, x.split(128))
    x_hat = sae(x)
    assert m["fvu"] == pytest.approx(float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-5)
    assert m["mse"] == pytest.approx(float((x - x_hat).pow(2).mean()), rel=1e-5)
    z = sae.encode(x)
    assert m["l0"] == pytest.approx(float((z > 0).sum(1).float().mean()))
    assert m["dead_fraction"] == pytest.approx(1 - float((z > 0).any(0).float().mean()))
    assert m["eval_tokens"] == m["dead_window_tokens"] == 300
    assert reconstruction_metrics(exact_sae(16, 0), [x])["fvu"] == pytest.approx(0, abs=1e-10)


def test_spliced_metrics_of_an_exact_and_a_zero_sae():
    lm = tiny_model("llama", layers=3, d=32)
    ids = torch.randint(3, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    exact = spliced_metrics(exact_sae(32, 1), lm, ids, progress=False)
    assert exact["ce_spliced"] == pytest.approx(exact["ce_clean"], abs=1e-5)
    assert exact["kl_spliced"] == pytest.approx(0, abs=1e-5)
    assert exact["ce_loss_recovered"] == pytest.approx(1, abs=1e-3)
    assert exact["ce_tokens"] == 4 * 22 and exact["ce_zero_ablated"] != exact["ce_clean"]
    # An SAE that always outputs zero is the zero ablation: nothing recovered.
    zero = TopKSAE(32, 64, 4, metadata={"layer": 1})
    useless = spliced_metrics(zero, lm, ids, progress=False)
    assert useless["ce_spliced"] == pytest.approx(useless["ce_zero_ablated"], abs=1e-5)
    assert useless["ce_loss_recovered"] == pytest.approx(0, abs=1e-3) and useless["kl_spliced"] > 0


def test_evaluate_without_activations_uses_the_models_own():
    lm = tiny_model("llama", layers=3, d=32)
    ids = torch.randint(3, 300, (3, 20), generator=torch.Generator().manual_seed(1))
    m = evaluate_sae(exact_sae(32, 2), lm=lm, contexts=ids, progress=False)
    assert m["eval_tokens"] == 3 * 19 and m["fvu"] == pytest.approx(0, abs=1e-8)
    assert m["ce_loss_recovered"] == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
def test_smollm2_streamed_sae_and_exact_splice(smollm2, tmp_path):
    from saesteer.sae import load_sae
    from saesteer.sae.config import TrainConfig
    from saesteer.sae.data import StreamSource
    from saesteer.sae.train import train_sae

    source = StreamSource(smollm2, 6, dataset="bundled", context_length=65, buffer_contexts=8, holdout_tokens=256)
    cfg = TrainConfig(k=32, expansion=8, batch_tokens=256, max_tokens=2 * 256, warmup_steps=1, holdout_tokens=256)
    result = train_sae(source, tmp_path / "sae", cfg, progress=False, eval_tokens=256, lm=smollm2, ce_contexts=2)
    sae = load_sae(tmp_path / "sae")
    assert (sae.d_in, sae.d_sae, sae.k) == (576, 4608, 32)
    assert sae.metadata["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sae.metadata["hf_hook_name"] == "model.layers.6" and sae.metadata["hook_name"] == "blocks.6.hook_resid_post"
    assert result.metrics["ce_zero_ablated"] > result.metrics["ce_clean"]
    ids = source.holdout_contexts(2)
    exact = spliced_metrics(exact_sae(576, 6), smollm2, ids, progress=False)
    assert exact["ce_loss_recovered"] == pytest.approx(1, abs=1e-3) and exact["kl_spliced"] < 1e-4
