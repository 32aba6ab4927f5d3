"""The train / eval sae commands, and one-line errors with exit code 2 on bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from saesteer.cli import app
from saesteer.errors import SaesteerError
from saesteer.sae.synthetic import synthetic_harvest

BIN = Path(sys.executable).parent
TRAIN = ["--k", "4", "--expansion", "4", "--batch-tokens", "256", "--warmup-steps", "5", "--holdout-tokens", "4096",
         "--eval-tokens", "4096", "--ce-contexts", "0", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def expect_error(match: str, *args) -> str:
    result = invoke(*args)
    assert isinstance(result.exception, SaesteerError), (result.exception, result.output)
    message = str(result.exception)
    assert "\n" not in message
    assert re.search(match, message), message
    return message


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    synthetic_harvest(root / "acts", n_tokens=24_576, d=64, shard_tokens=4096)
    synthetic_harvest(root / "narrow", n_tokens=8192, d=32, shard_tokens=4096)
    synthetic_harvest(root / "other_model", n_tokens=8192, d=64, shard_tokens=4096, model_id="someone/else")
    synthetic_harvest(root / "other_layer", n_tokens=8192, d=64, shard_tokens=4096, layers=(2,))
    result = invoke("train", root / "acts", "--out", root / "sae", "--max-tokens", 256 * 20, "--checkpoint-every", 5, *TRAIN)
    assert result.exit_code == 0, result.output
    return root


def test_train_contract_call_form_and_eval_sae(world, tmp_path):
    # The acceptance call form: saesteer train ACTS_DIR --k 32 --expansion 8 --out SAE_DIR
    result = invoke("train", world / "acts", "--k", 32, "--expansion", 8, "--out", tmp_path / "sae",
                    "--max-tokens", 256 * 4, "--batch-tokens", 256, "--ce-contexts", 0, "--no-progress",
                    "--holdout-tokens", 4096)
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["k"] == 32 and cfg["d_sae"] == 512 and cfg["architecture"] == "topk"
    assert set(json.loads((tmp_path / "sae" / "metrics.json").read_text())) >= {"fvu", "mse", "l0", "dead_fraction"}
    result = invoke("eval", "sae", world / "sae", "--acts", world / "acts", "--contexts", 0,
                    "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    trained = json.loads((world / "sae" / "metrics.json").read_text())
    assert printed["fvu"] == pytest.approx(trained["fvu"], rel=1e-6)
    assert printed["content_hash"] and json.loads((tmp_path / "m.json").read_text()) == printed


def test_bad_input_errors(world, tmp_path):
    ckpt = world / "sae" / "checkpoint.pt"
    before = ckpt.read_bytes()
    expect_error(r"k = 600 is larger than the dictionary \(64 latents\)",
                 "train", world / "acts", "--out", tmp_path / "a", "--k", 600, "--expansion", 1)
    expect_error(r"width 32 but the SAE expects d_in = 64", "eval", "sae", world / "sae", "--acts", world / "narrow",
                 "--contexts", 0)
    expect_error(r"model 'someone/else' but the SAE was trained on 'synthetic/sparse'",
                 "eval", "sae", world / "sae", "--acts", world / "other_model", "--contexts", 0)
    expect_error(r"from layer 2 but the SAE reads layer 1", "eval", "sae", world / "sae", "--acts", world / "other_layer",
                 "--contexts", 0)
    expect_error(r"trained on other activations \(different model_id",
                 "train", world / "other_model", "--out", world / "sae", "--resume", "--max-tokens", 256 * 20, *TRAIN)
    expect_error(r"width 32 but the checkpoint's SAE .* has d_in = 64", "train", world / "narrow", "--out", world / "sae", "--resume", "--max-tokens", 256 * 20, *TRAIN)
    expect_error(r"already holds a training run.*--resume", "train", world / "acts", "--out", world / "sae", *TRAIN)
    assert ckpt.read_bytes() == before


def test_nan_and_damaged_shards(world, tmp_path):
    acts = tmp_path / "acts"
    synthetic_harvest(acts, n_tokens=16_384, d=64, shard_tokens=4096)
    shard = acts / "shard_00001.safetensors"
    tensors = load_file(str(shard))
    tensors["model.layers.1"][17, 5] = float("nan")
    save_file(tensors, str(shard))
    expect_error(r"NaN or inf\) in shard shard_00001.safetensors, row 17",
                 "train", acts, "--out", tmp_path / "s1", *TRAIN)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    expect_error(r"shard .*shard_00001.safetensors is corrupt or truncated",
                 "train", acts, "--out", tmp_path / "s2", *TRAIN)


def test_corrupt_sae_weights(world, tmp_path):
    import shutil

    shutil.copytree(world / "sae", tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expect_error(r"SAE weights .* are corrupt or truncated", "eval", "sae", tmp_path / "sae", "--acts", world / "acts")


def test_the_real_command_exits_2_with_one_line(world, tmp_path):
    proc = subprocess.run([str(BIN / "saesteer"), "train", str(world / "acts"), "--out", str(tmp_path / "x"),
                           "--k", "9999", "--expansion", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: k = 9999 is larger than the dictionary (64 latents)"], proc.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_train_help_lists_the_contract_options():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for opt in ("--k", "--expansion", "--out", "--resume", "--auxk-coef", "--model"):
        assert opt in result.output
