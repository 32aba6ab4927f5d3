"""SAELens layout out and in, sparsify layout in, and clear errors on damaged folders."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from saesteer.errors import SaesteerError
from saesteer.sae import JumpReLUSAE, ReluSAE, TopKSAE, load_sae, save_sae


def trained_like_sae(d_in=48, d_sae=192, k=12, seed=0):
    sae = TopKSAE.init(d_in, d_sae, k, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(d_in, d_sae, generator=g) * 0.1)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    sae.metadata.update(model_name="smollm2", model_id="HuggingFaceTB/SmolLM2-135M-Instruct", layer=6,
                        hook_name="blocks.6.hook_resid_post", hf_hook_name="model.layers.6", context_size=512)
    return sae


def test_save_load_roundtrip(tmp_path):
    sae = trained_like_sae()
    out = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 12 and cfg["d_in"] == 48 and cfg["d_sae"] == 192
    assert cfg["metadata"]["hook_name"] == "blocks.6.hook_resid_post"
    assert cfg["metadata"]["hf_hook_name"] == "model.layers.6" and cfg["metadata"]["model_name"] == "smollm2"
    loaded = load_sae(out)
    assert isinstance(loaded, TopKSAE) and loaded.k == 12 and (loaded.d_in, loaded.d_sae) == (48, 192)
    assert loaded.architecture == "topk" and loaded.source_path == out
    assert loaded.metadata["layer"] == 6 and loaded.metadata["model_id"] == sae.metadata["model_id"]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    assert loaded.W_enc.shape == (48, 192) and loaded.W_dec.shape == (192, 48)
    x = torch.randn(10, 48)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    file_hash = hashlib.sha256((out / "sae_weights.safetensors").read_bytes()).hexdigest()
    assert loaded.content_hash() == file_hash == sae.content_hash()
    assert not list(out.glob(".*tmp"))


def test_sae_lens_loads_our_sae_and_agrees():
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens (test extra) is not installed")
    import tempfile

    sae = trained_like_sae()
    with tempfile.TemporaryDirectory() as d:
        save_sae(sae, d)
        theirs = sae_lens.SAE.load_from_disk(d)
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 12
    assert theirs.cfg.metadata.hook_name == "blocks.6.hook_resid_post"
    torch.manual_seed(0)
    x = torch.randn(64, 48) * 3
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        torch.testing.assert_close(sae.encode(x), z_theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(z_theirs), theirs.decode(z_theirs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), theirs(x), rtol=1e-5, atol=1e-5)


def _write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("layout", ["v6", "pre6"])
def test_saelens_jumprelu_and_relu_folders_load(tmp_path, layout):
    g = torch.Generator().manual_seed(1)
    d_in, d_sae = 16, 40
    t = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g)}
    meta = {"model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post", "context_size": 1024}
    x = torch.randn(30, d_in)
    for arch, extra in (("jumprelu", {"threshold": torch.rand(d_sae, generator=g)}), ("standard", {})):
        cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
               "apply_b_dec_to_input": arch == "standard", "normalize_activations": "none"}
        cfg.update({"metadata": {**meta, "sae_lens_version": "6.5.0"}} if layout == "v6" else meta)
        folder = tmp_path / f"{arch}-{layout}"
        _write_saelens(folder, cfg, {**t, **extra})
        sae = load_sae(folder)
        assert isinstance(sae, JumpReLUSAE if arch == "jumprelu" else ReluSAE)
        assert sae.metadata["layer"] == 12 and sae.metadata["model_name"] == "gemma-2-2b" and sae.k is None
        xc = x - t["b_dec"] if arch == "standard" else x
        pre = xc @ t["W_enc"] + t["b_enc"]
        want = pre.relu() * (pre > extra["threshold"]) if arch == "jumprelu" else pre.relu()
        torch.testing.assert_close(sae.encode(x), want)
        torch.testing.assert_close(sae.decode(want), want @ t["W_dec"] + t["b_dec"])
        try:
            import sae_lens
        except ImportError:
            continue
        theirs = sae_lens.SAE.load_from_disk(folder)
        with torch.no_grad():
            torch.testing.assert_close(sae.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)


def test_saelens_topk_with_decoder_norm_rescaling_is_folded(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens (test extra) is not installed")
    g = torch.Generator().manual_seed(2)
    d_in, d_sae = 16, 48
    t = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g) * 2,
         "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g)}
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 5, "dtype": "float32",
           "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.20.0"}}
    _write_saelens(tmp_path / "s", cfg, t)
    ours, theirs = load_sae(tmp_path / "s"), sae_lens.SAE.load_from_disk(tmp_path / "s")
    torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(d_sae))
    x = torch.randn(40, d_in)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_sparsify_folder_loads_and_agrees(tmp_path):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify (test extra) is not installed")
    torch.manual_seed(3)
    coder = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(k=6, num_latents=96))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.1)
        coder.b_dec.normal_(0, 1)
    coder.save_to_disk(tmp_path / "run" / "layers.4")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    sae = load_sae(tmp_path / "run" / "layers.4")
    assert isinstance(sae, TopKSAE) and sae.k == 6 and sae.d_sae == 96 and sae.d_in == 32
    assert sae.metadata["layer"] == 4 and sae.metadata["hf_hook_name"] == "layers.4"
    assert sae.metadata["hook_name"] == "blocks.4.hook_resid_post"
    assert sae.metadata["model_name"] == "EleutherAI/pythia-70m"
    x = torch.randn(50, 32)
    with torch.no_grad():
        enc = coder.encode(x)
        want = torch.zeros(50, 96).scatter(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), coder.decode(enc.top_acts, enc.top_indices), rtol=1e-5, atol=1e-5)
    with pytest.raises(SaesteerError, match="several SAEs.*layers.4"):
        load_sae(tmp_path / "run")


def test_damaged_folders_give_clear_errors(tmp_path):
    out = save_sae(trained_like_sae(), tmp_path / "sae")
    weights = out / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaesteerError, match="corrupt or truncated"):
        load_sae(out)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(SaesteerError, match="corrupt or truncated"):
        load_sae(out)
    weights.unlink()
    with pytest.raises(SaesteerError, match="not an SAE folder"):
        load_sae(out)
    with pytest.raises(SaesteerError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    save_sae(trained_like_sae(), tmp_path / "bad")
    (tmp_path / "bad" / "cfg.json").write_text("{not json")
    with pytest.raises(SaesteerError, match="not valid JSON"):
        load_sae(tmp_path / "bad")
    cfg = {"architecture": "topk", "d_in": 48, "d_sae": 192, "k": 500, "metadata": {"sae_lens_version": "6.0.0"}}
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaesteerError, match="larger than the dictionary"):
        load_sae(tmp_path / "bad")
    cfg.update(k=12, d_in=40)
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaesteerError, match="shape"):
        load_sae(tmp_path / "bad")
    cfg.update(d_in=48, architecture="gated")
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaesteerError, match="not supported"):
        load_sae(tmp_path / "bad")
