"""Training: it learns, it is deterministic, it resumes after SIGKILL, it runs under torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saesteer.sae import TopKSAE, load_sae
from saesteer.sae.config import TrainConfig
from saesteer.sae.data import ShardSource
from saesteer.sae.synthetic import synthetic_harvest
from saesteer.sae.train import CHECKPOINT, train_sae

BIN = Path(sys.executable).parent
SMALL = dict(k=4, expansion=4, batch_tokens=512, warmup_steps=10, holdout_tokens=8192, lr=3e-3)


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acts")
    synthetic_harvest(folder, n_tokens=65_536, d=64, shard_tokens=8192)
    return folder


def cli_env():
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def train_args(acts, out, *extra):
    return [str(acts), "--out", str(out), "--k", "4", "--expansion", "4", "--batch-tokens", "512",
            "--warmup-steps", "10", "--holdout-tokens", "8192", "--lr", "3e-3", "--ce-contexts", "0",
            "--no-progress", "--eval-tokens", "8192", *extra]


def test_training_learns_and_writes_an_sae_lens_folder(acts, tmp_path):
    source = ShardSource(acts, holdout_tokens=8192)
    result = train_sae(source, tmp_path / "sae", TrainConfig(**SMALL), progress=False, eval_tokens=8192)
    m = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(result.metrics))
    assert m["fvu"] < 0.5 and m["l0"] <= 4 and m["dead_fraction"] < 0.2 and m["eval_tokens"] == 8192
    assert m["steps"] == (65_536 - 8192) // 512 and m["train_tokens"] == m["steps"] * 512
    sae = load_sae(tmp_path / "sae")
    assert isinstance(sae, TopKSAE) and sae.d_sae == 256 and sae.k == 4
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post" and sae.metadata["hf_hook_name"] == "model.layers.1"
    assert sae.metadata["model_id"] == "synthetic/sparse" and sae.metadata["activation_scale"] > 0
    # The saved SAE acts on raw activations: same FVU as the metrics say.
    x = torch.cat(list(source.holdout(8192)))
    fvu = float((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu == pytest.approx(m["fvu"], rel=1e-3)


def test_training_is_deterministic_and_auxk_off_reproduces_the_paper_setting(acts, tmp_path):
    source = ShardSource(acts, holdout_tokens=8192)
    cfg = TrainConfig(**{**SMALL, "max_tokens": 40 * 512})
    a = train_sae(source, tmp_path / "a", cfg, progress=False, eval_tokens=4096)
    b = train_sae(source, tmp_path / "b", cfg, progress=False, eval_tokens=4096)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(a.sae, name), getattr(b.sae, name))
    # With every latent counted dead at once, AuxK changes the run; with coefficient 0 it cannot.
    on = train_sae(source, tmp_path / "on", TrainConfig(**{**SMALL, "max_tokens": 40 * 512, "dead_tokens": 1}),
                   progress=False, eval_tokens=4096)
    off = train_sae(source, tmp_path / "off", TrainConfig(**{**SMALL, "max_tokens": 40 * 512, "dead_tokens": 1,
                                                             "auxk_coef": 0.0}), progress=False, eval_tokens=4096)
    off_default = train_sae(source, tmp_path / "off2", TrainConfig(**{**SMALL, "max_tokens": 40 * 512, "auxk_coef": 0.0}),
                            progress=False, eval_tokens=4096)
    assert not torch.equal(on.sae.W_enc, off.sae.W_enc)
    assert torch.equal(off.sae.W_enc, off_default.sae.W_enc)


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(acts, tmp_path):
    args = ["--checkpoint-every", "10", "--max-tokens", str(400 * 512)]
    full = subprocess.run([str(BIN / "saesteer"), "train", *train_args(acts, tmp_path / "full", *args)],
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([str(BIN / "saesteer"), "train", *train_args(acts, out, *args)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "cfg.json").exists()
    step = torch.load(out / CHECKPOINT, weights_only=False)["step"]
    assert 0 < step < 400
    resumed = subprocess.run([str(BIN / "saesteer"), "train", *train_args(acts, out, *args, "--resume")],
                             env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("fvu", "mse", "l0", "dead_fraction"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    sa, sb = load_sae(tmp_path / "full"), load_sae(out)
    torch.testing.assert_close(sa.W_dec, sb.W_dec, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_ddp_with_two_processes_matches_a_single_process_run(acts, tmp_path):
    common = ["--max-tokens", str(100 * 512)]
    single = subprocess.run([str(BIN / "saesteer"), "train", *train_args(acts, tmp_path / "one", *common)],
                            env=cli_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(BIN / "saesteer"),
                          "train", *train_args(acts, tmp_path / "two", *common)],
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 100
    assert two["train_tokens"] == one["train_tokens"]
    assert two["fvu"] == pytest.approx(one["fvu"], rel=0.15)
    assert abs(two["dead_fraction"] - one["dead_fraction"]) < 0.05


def test_streaming_from_a_model(tmp_path):
    from saesteer.sae.data import StreamSource
    from tests.tiny import tiny_model

    lm = tiny_model("llama", layers=3, d=32)
    source = StreamSource(lm, 1, dataset="bundled", context_length=33, buffer_contexts=32, holdout_tokens=512)
    cfg = TrainConfig(k=4, expansion=4, batch_tokens=256, max_tokens=256 * 12, warmup_steps=2, holdout_tokens=512)
    result = train_sae(source, tmp_path / "s", cfg, progress=False, eval_tokens=512, lm=lm, ce_contexts=4)
    m = result.metrics
    assert m["eval_tokens"] == 512 and m["steps"] == 12 and m["ce_contexts"] == 4 and m["fvu"] < 1.0
    assert {"ce_clean", "ce_spliced", "ce_zero_ablated", "ce_loss_recovered", "kl_spliced"} <= set(m)
    assert load_sae(tmp_path / "s").metadata["hf_hook_name"] == "model.layers.1"
    # A resumed streamed run skips exactly the batches it saw (here 5, across a buffer boundary).
    full = source.batches(256, seed=0)
    head = [next(full) for _ in range(7)]
    skipped = source.batches(256, seed=0, skip_batches=5)
    assert torch.equal(next(skipped), head[5]) and torch.equal(next(skipped), head[6])


def test_initial_encoder_scale_minimises_the_first_batch_error():
    from saesteer.sae.synthetic import synthetic_activations
    from saesteer.sae.train import init_sae

    x = synthetic_activations(2048, 32, n_features=128, active=8, seed=0) * 7.0
    sae, scale = init_sae(x, 128, TrainConfig(k=8, d_sae=128))
    xs = x * scale
    tied = TopKSAE.init(32, 128, 8, seed=0, b_dec=sae.b_dec.detach().clone())
    assert not torch.allclose(sae.W_enc, tied.W_enc)  # the fit moved the scale away from 1
    assert torch.allclose(sae.W_enc / sae.W_enc.norm(dim=0), tied.W_enc, atol=1e-5)  # direction: the transpose

    def error(factor):
        with torch.no_grad():
            probe = TopKSAE.init(32, 128, 8, seed=0, b_dec=sae.b_dec.detach().clone())
            probe.W_enc.copy_(sae.W_enc * factor)
            return float((probe(xs) - xs).pow(2).sum())

    assert error(1.0) < min(error(0.9), error(1.1), error(1.0 / float(sae.W_enc.detach().norm(dim=0).mean())))
