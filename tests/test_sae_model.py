"""The SAE math: encode/decode, feature_acts, decoder constraint, and the sparse backward."""

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.sae import JumpReLUSAE, ReluSAE, TopKSAE
from saesteer.sae.config import TrainConfig, lr_factor
from saesteer.sae.kernels import gather_dots, scatter_rows, sparse_decode, topk_autoencode
from saesteer.sae.train import TrainStep, fold_scale, geometric_median


def random_sae(cls=TopKSAE, d_in=32, d_sae=128, k=8, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    sae = cls(d_in, d_sae, k, **kw) if cls is TopKSAE else cls(d_in, d_sae, **kw)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


def naive_codes(sae, x):
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.architecture == "topk":
        v, i = pre.topk(sae.k)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())
    if sae.architecture == "jumprelu":
        return pre * (pre > sae.threshold) * (pre > 0)
    return pre.relu()


@pytest.mark.parametrize("cls", [TopKSAE, ReluSAE, JumpReLUSAE])
def test_encode_decode_match_the_formulas(cls):
    sae = random_sae(cls)
    x = torch.randn(3, 5, 32)
    z = sae.encode(x)
    torch.testing.assert_close(z, naive_codes(sae, x))
    torch.testing.assert_close(sae.decode(z), z @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(sae(x), sae.decode(z), rtol=1e-5, atol=1e-5)
    if cls is TopKSAE:
        assert ((z > 0).sum(-1) <= sae.k).all()
        values, indices = sae.encode_sparse(x)
        torch.testing.assert_close(sae.decode_sparse(values, indices), sae.decode(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [TopKSAE, ReluSAE, JumpReLUSAE])
def test_feature_acts_equal_the_selected_columns_of_encode(cls):
    sae = random_sae(cls)
    x = torch.randn(4, 7, 32)
    z = sae.encode(x)
    idx = torch.tensor([0, 5, 17, 127, 5])
    torch.testing.assert_close(sae.feature_acts(x, idx), z[..., idx])
    # Latents that are active somewhere must be among those checked.
    idx = z.reshape(-1, sae.d_sae).abs().sum(0).nonzero().squeeze(1)[:10]
    torch.testing.assert_close(sae.feature_acts(x, idx), z[..., idx])


def test_no_b_dec_subtraction_when_the_config_says_so():
    sae = random_sae(ReluSAE, apply_b_dec_to_input=False)
    x = torch.randn(6, 32)
    torch.testing.assert_close(sae.encode(x), (x @ sae.W_enc + sae.b_enc).relu())


def test_k_larger_than_the_dictionary_is_rejected():
    with pytest.raises(SaesteerError, match="k = 300"):
        TopKSAE(8, 256, 300)
    with pytest.raises(SaesteerError, match="larger than the dictionary"):
        TrainConfig(k=300, d_sae=256)
    with pytest.raises(SaesteerError, match="larger than the dictionary"):
        TrainConfig(k=100, expansion=2).dict_size(32)


def test_init_is_tied_and_unit_norm():
    sae = TopKSAE.init(16, 64, 4, seed=3)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    again = TopKSAE.init(16, 64, 4, seed=3)
    assert torch.equal(sae.W_dec, again.W_dec)


def test_decoder_constraint_removes_the_parallel_gradient_and_renormalises():
    sae = TopKSAE.init(16, 64, 4, seed=0)
    g = torch.randn(64, 16)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_gradient()
    # What is left is orthogonal to each row; the orthogonal part is unchanged.
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64), atol=1e-6, rtol=0)
    w = sae.W_dec.detach()
    torch.testing.assert_close(sae.W_dec.grad, g - (g * w).sum(1, keepdim=True) * w)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_scatter_rows_and_gather_dots_match_dense():
    torch.manual_seed(0)
    n, k, m, d = 50, 6, 40, 12
    idx = torch.stack([torch.randperm(m)[:k] for _ in range(n)])
    w, src = torch.randn(n, k), torch.randn(n, d)
    dense = torch.zeros(n, m).scatter(1, idx, w)
    torch.testing.assert_close(scatter_rows(idx, w, src, m), dense.t() @ src)
    b = torch.randn(m, d)
    torch.testing.assert_close(gather_dots(idx, src, b), (src @ b.t()).gather(1, idx))


def naive_loss(sae, x, dead, auxk_coef, k_aux):
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    v, i = pre.topk(sae.k)
    z = torch.zeros_like(pre).scatter(1, i, v.relu())
    x_hat = z @ sae.W_dec + sae.b_dec
    total_var = (x - x.mean(0)).pow(2).sum()
    fvu = (x_hat - x).pow(2).sum() / total_var
    if not auxk_coef or dead is None:
        return fvu
    av, ai = pre[:, dead].topk(min(k_aux, len(dead)))
    z_aux = torch.zeros_like(pre).scatter(1, dead[ai], av.relu())
    residual = (x - x_hat).detach()
    aux = min(len(dead) / k_aux, 1.0) * (z_aux @ sae.W_dec - residual).pow(2).sum() / total_var
    return fvu + auxk_coef * aux


@pytest.mark.parametrize("auxk_coef", [0.0, 1 / 32, 0.5])
def test_sparse_backward_equals_naive_dense_backward(auxk_coef):
    torch.manual_seed(1)
    sae = TopKSAE.init(24, 96, 6, seed=1, b_dec=torch.randn(24) * 0.1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    x = torch.randn(200, 24) * 2 + 0.5
    dead = torch.arange(0, 96, 3)
    step = TrainStep(sae, TrainConfig(k=6, auxk_coef=auxk_coef, k_aux=12, d_sae=96))
    out = step(x, dead)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    ref_loss = naive_loss(sae, x, dead, auxk_coef, 12)
    ref_loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref_loss.detach())
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_auxk_off_gives_plain_fvu():
    torch.manual_seed(2)
    sae = TopKSAE.init(16, 64, 4, seed=2)
    x = torch.randn(100, 16)
    dead = torch.arange(64)
    off = TrainStep(sae, TrainConfig(k=4, auxk_coef=0.0, d_sae=64))(x, dead)
    assert float(off.auxk.detach()) == 0.0 and torch.equal(off.loss, off.fvu)
    on = TrainStep(sae, TrainConfig(k=4, auxk_coef=1 / 32, d_sae=64))(x, dead)
    assert float(on.auxk.detach()) > 0 and float(on.loss.detach()) > float(on.fvu.detach())
    torch.testing.assert_close(on.fvu, off.fvu)


def test_bf16_encoder_matmul_is_close():
    torch.manual_seed(3)
    sae = TopKSAE.init(32, 128, 8, seed=3)
    x = torch.randn(64, 32)
    r32, v32, i32, _, _ = topk_autoencode(x, sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, 8)
    r16, v16, i16, _, _ = topk_autoencode(x, sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, 8, matmul_dtype=torch.bfloat16)
    assert (torch.sort(i32, 1).values == torch.sort(i16, 1).values).float().mean() > 0.9
    assert float((r16 - r32).detach().norm() / r32.detach().norm()) < 0.1
    torch.testing.assert_close(sparse_decode(v32, i32, sae.W_dec), r32)


def test_gradient_reaches_codes_and_inputs():
    torch.manual_seed(5)
    sae = TopKSAE.init(12, 48, 4, seed=5)
    x = torch.randn(30, 12, requires_grad=True)
    recon, values, *_ = topk_autoencode(x, sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, 4)
    (recon.pow(2).sum() + values.sum()).backward()
    x2 = x.detach().clone().requires_grad_()
    z = naive_codes(sae, x2)
    ((z @ sae.W_dec).pow(2).sum() + z.sum()).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_scale_folding_gives_raw_space_sae():
    torch.manual_seed(4)
    sae = random_sae(TopKSAE, d_in=16, d_sae=64, k=4)
    x, s = torch.randn(20, 16) * 30, 0.05
    folded = fold_scale(sae, s)
    torch.testing.assert_close(folded(x), sae(x * s) / s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded.encode(x), sae.encode(x * s) / s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded.W_dec, sae.W_dec)
    assert folded.metadata["activation_scale"] == s


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(200, 4) * 0.1 + 1.0, torch.full((20, 4), 100.0)])
    assert (geometric_median(x) - 1.0).abs().max() < 0.2
    assert (x.mean(0) - 1.0).abs().max() > 5


def test_lr_schedule():
    f = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(f[80:], f[81:]))
