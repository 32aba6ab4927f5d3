"""Bad input, command by command: exit code 2, one line naming the problem and the fix, no
traceback, and nothing already on disk changed (issue #13, item 1).

Every case runs the real `saesteer` entry point in-process (`saesteer.cli.main`) against one
small world of tiny files: a tiny random model, SAEs, synthetic activation shards, datasets,
specs and result folders, good and broken. Each row of CASES is (command, bad input, arguments,
expected fragment of the message); `{w}` is the world folder, `{m}` the model, `{out}` a fresh
output folder that already holds a file of its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from saesteer.sae import TopKSAE, save_sae
from saesteer.sae.synthetic import synthetic_harvest
from tests.tiny import save_tiny_model


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def _copy_sae(w: Path, src: str, name: str, cfg: dict | None = None, meta: dict | None = None) -> None:
    shutil.copytree(w / src, w / name)
    c = json.loads((w / name / "cfg.json").read_text())
    c.update(cfg or {})
    c["metadata"].update(meta or {})
    _write_json(w / name / "cfg.json", c)


def _nan_weights(folder: Path) -> None:
    path = folder / "sae_weights.safetensors"
    tensors = load_file(str(path))
    tensors["W_dec"][3, 0] = float("nan")
    save_file(tensors, str(path))


def _acts_variant(w: Path, name: str, change) -> None:
    shutil.copytree(w / "acts", w / name)
    manifest = json.loads((w / name / "manifest.json").read_text())
    _write_json(w / name / "manifest.json", change(manifest, w / name))


def _missing_last(m: dict, folder: Path) -> dict:
    (folder / m["shards"][-1]["file"]).unlink()
    return m


def _spec(w: Path, name: str, change=None) -> None:
    body = {"saesteer_spec": 1, "interventions": [{"hook": "model.layers.1", "sae": {"path": "sae"},
                                                   "features": [{"feature": 3, "op": "clamp", "value": 5}]}]}
    if change is not None:
        change(body)
    _write_json(w / name, body)


def _condition(**kw):
    def change(body):
        body["condition"] = {"detector": "sae_feature", "hook": "model.layers.1", "sae": "sae", "feature": 4,
                             "threshold": 1.0, **kw}
    return change


RESULT_ROW = {"name": "none", "method": "none", "strength": None, "feature": None, "layer": None,
              "metric": "unsafe_refusal", "dataset": "all", "value": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4,
              "spec_hash": None}


def _sweep(w: Path, name: str, text: str | bytes) -> None:
    (w / name).mkdir()
    path = w / name / "results.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad")
    model = save_tiny_model(w / "model", layers=4, d=64)
    sae = TopKSAE.init(64, 256, 8, seed=1)
    sae.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1, "model_id": model})
    save_sae(sae, w / "sae")
    _copy_sae(w, "sae", "sae_other", meta={"model_id": "someone/else"})
    _copy_sae(w, "sae", "sae_layer", meta={"layer": "one"})
    _copy_sae(w, "sae", "sae_nan")
    _nan_weights(w / "sae_nan")
    narrow = TopKSAE.init(32, 128, 4, seed=1)
    narrow.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(narrow, w / "sae_narrow")

    # Activations and an SAE trained on them (for eval sae), good and broken.
    synthetic_harvest(w / "acts", n_tokens=8192, d=64, shard_tokens=2048)
    syn = TopKSAE.init(64, 256, 8, seed=2)
    syn.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1, "model_id": "synthetic/sparse",
                         "model_name": "synthetic/sparse"})
    save_sae(syn, w / "syn")
    _copy_sae(w, "syn", "syn_neg", cfg={"d_in": -64})
    _copy_sae(w, "syn", "syn_huge", cfg={"d_sae": 10**12})
    _copy_sae(w, "syn", "syn_layer", meta={"layer": 1.5})
    _copy_sae(w, "syn", "syn_nan")
    _nan_weights(w / "syn_nan")
    _acts_variant(w, "acts_list", lambda m, f: [m])
    _acts_variant(w, "acts_more", lambda m, f: {**m, "shards": [{**m["shards"][0], "tokens": 4096}, *m["shards"][1:]]})
    _acts_variant(w, "acts_missing", _missing_last)
    _acts_variant(w, "acts_notokens", lambda m, f: {**m, "shards": [{"file": s["file"], "contexts": 1} for s in m["shards"]]})
    _acts_variant(w, "acts_shardstr", lambda m, f: {**m, "shards": [s["file"] for s in m["shards"]]})

    # Datasets and (prompt, response) files.
    (w / "latin1.jsonl").write_bytes('{"prompt": "café", "label": "safe"}\n'.encode("latin-1"))
    (w / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (w / "latin1.csv").write_bytes("prompt,label\ncafé,safe\n".encode("latin-1"))
    (w / "listrow.jsonl").write_text('["a", "b"]\n')
    (w / "numprompt.jsonl").write_text('{"prompt": 5}\n')
    (w / "list.json").write_text("[1, 2]")
    (w / "badconv.jsonl").write_text(json.dumps({"prompt": [{"rol": "user", "content": "hi"}], "label": "safe"}) + "\n")
    (w / "pairs.jsonl").write_text(json.dumps({"prompt": "hi", "response": "I'm sorry, I can't."}) + "\n")
    (w / "pairs_latin1.jsonl").write_bytes('{"prompt": "café", "response": "no"}\n'.encode("latin-1"))
    (w / "labelled_latin1.jsonl").write_bytes('{"response": "café", "refusal": true}\n'.encode("latin-1"))
    (w / "judged_list.jsonl").write_text('["not", "a", "row"]\n')
    (w / "weights_list.json").write_text('[1, 2, 3]')

    # Steering specs (paths relative to the spec, as saesteer writes them).
    _spec(w, "ok.json")
    _spec(w, "typo_valeu.json", lambda b: b["interventions"][0]["features"][0].update(valeu=2))
    _spec(w, "typo_strenght.json", lambda b: b["interventions"][0].update(strenght=2))
    _spec(w, "typo_top.json", lambda b: b.update(positons="all"))
    _spec(w, "typo_ref.json", lambda b: b["interventions"][0].update(sae={"pth": "sae"}))
    _spec(w, "ivs_mapping.json", lambda b: b.update(interventions=b["interventions"][0]))
    _spec(w, "ivs_strings.json", lambda b: b.update(interventions=["x"]))
    _spec(w, "feature_float.json", lambda b: b["interventions"][0]["features"][0].update(feature=3.7))
    _spec(w, "clamp_huge.json", lambda b: b["interventions"][0]["features"][0].update(value=1e30))
    _spec(w, "model_str.json", lambda b: b.update(model="smollm2"))
    _spec(w, "cond_calib.json", _condition(calibration="fpr 5%"))
    body = {"saesteer_spec": 1, "interventions": [{"hook": "model.layers.1", "sae": "sae",
                                                   "features": [{"feature": 3, "value": 5}]}],
            "condition": {"detector": "sae_feature", "hook": "model.layers.1", "sae": "sae", "feature": 4,
                          "threshold": float("nan")}}
    (w / "cond_nan.yaml").write_text(yaml.safe_dump(body))
    (w / "spec_list.json").write_text("[1]")
    (w / "spec_latin1.yaml").write_bytes("name: café\n".encode("latin-1"))

    # Earlier evaluation folders, damaged.
    (w / "ev_runlist").mkdir()
    (w / "ev_runlist" / "run.json").write_text("[1]")
    (w / "ev_noid").mkdir()
    (w / "ev_noid" / "responses.jsonl").write_text('{"response": "x"}\n')
    (w / "ev_latin1").mkdir()
    (w / "ev_latin1" / "responses.jsonl").write_bytes('{"id": "caf\xe9"}\n'.encode("latin-1"))

    # A discovery folder (made by hand: the errors come before anything reads more of it).
    (w / "disc").mkdir()
    _write_json(w / "disc" / "features.json", {"sae": {"path": "../sae", "hook": "model.layers.1"},
                                               "features": [{"feature": 3, "best_value": 1.0}]})
    _spec(w / "disc", "conditional.yaml", _condition())
    (w / "disc_bad").mkdir()
    (w / "disc_bad" / "features.json").write_text("[]")

    # Sweep folders for the report.
    _sweep(w, "sweep_ok", json.dumps(RESULT_ROW) + "\n")
    _sweep(w, "sweep_listrow", json.dumps(RESULT_ROW) + '\n["x"]\n')
    _sweep(w, "sweep_noname", json.dumps({k: v for k, v in RESULT_ROW.items() if k != "name"}) + "\n")
    _sweep(w, "sweep_latin1", b'{"name": "caf\xe9"}\n')
    (w / "demo_other").mkdir()
    (w / "demo_other" / "demo.json").write_text('{"settings": {"model": "another"}}')

    # Outputs in the way.
    (w / "out_file").write_text("precious\n")
    (w / "out_dir").mkdir()
    (w / "out_dir" / "keep.txt").write_text("keep\n")
    return w


GEN = ["generate", "{m}", "hi", "--max-new-tokens", "2"]
HARVEST = ["harvest", "{m}", "--out", "{out}", "--dataset", "bundled", "--context-length", "32"]
TRAIN = ["train", "{w}/acts", "--out", "{out}", "--k", "4", "--expansion", "2", "--batch-tokens", "256",
         "--max-tokens", "1024", "--holdout-tokens", "2048", "--ce-contexts", "0", "--no-progress"]
EVAL_SAE = ["eval", "sae", "{w}/syn", "--acts", "{w}/acts", "--contexts", "0"]
DISCOVER = ["discover", "{m}", "--sae", "{w}/sae", "--out", "{out}", "--n-rank", "4", "--n-causal", "1",
            "--candidates", "1", "--max-new-tokens", "2", "--judge", "phrase"]
REFUSAL = ["eval", "refusal", "{m}", "--out", "{out}", "--max-new-tokens", "2", "--judge", "phrase", "--limit", "2"]
CAPABILITY = ["eval", "capability", "{m}", "--out", "{out}", "--tasks", "bundled_mc", "--mmlu-shots", "0"]
REPLAY = ["eval", "multiturn", "{m}", "--out", "{out}", "--mode", "replay", "--max-new-tokens", "2"]
SWEEP = ["sweep", "{m}", "--out", "{out}", "--discovery", "{w}/disc", "--methods", "none,sae_clamp", "--limit", "1",
         "--tasks", "", "--max-new-tokens", "2", "--judge", "phrase"]
SEARCH = ["search", "{m}", "--discovery", "{w}/disc", "--out", "{out}", "--gates", "none", "--max-new-tokens", "2",
          "--judge", "phrase"]
JUDGE = ["judge", "--input", "{w}/pairs.jsonl", "--out", "{out}/judged.jsonl"]
SERVE = ["serve", "{m}", "--no-auth", "--port", "{free}"]
DEMO = ["demo", "--fast", "--model", "{m}", "--out", "{out}"]

CASES = [
    # generate: specs (misspelt keys, wrong shapes, numbers nobody checked) and SAEs nobody checked
    ("generate", "spec key valeu", GEN + ["--steer", "{w}/typo_valeu.json"], "unknown key 'valeu' in intervention 0, feature edit 0; did you mean 'value'?"),
    ("generate", "spec key strenght", GEN + ["--steer", "{w}/typo_strenght.json"], "unknown key 'strenght' in intervention 0"),
    ("generate", "spec key positons", GEN + ["--steer", "{w}/typo_top.json"], "did you mean 'positions'?"),
    ("generate", "--positions foo", GEN + ["--positions", "foo"], "unknown --positions 'foo'; use all, prompt, generated"),
    ("generate", "--positions, no steering", GEN + ["--positions", "prompt"], "--positions needs steering"),
    ("generate", "spec key pth", GEN + ["--steer", "{w}/typo_ref.json"], "unknown key 'pth' in the sae of intervention 0; did you mean 'path'?"),
    ("generate", "interventions a mapping", GEN + ["--steer", "{w}/ivs_mapping.json"], "`interventions` must be a list"),
    ("generate", "interventions of strings", GEN + ["--steer", "{w}/ivs_strings.json"], "intervention 0 must be a mapping"),
    ("generate", "feature id 3.7", GEN + ["--steer", "{w}/feature_float.json"], "must be a latent index (a whole number >= 0), got 3.7"),
    ("generate", "spec clamp 1e30", GEN + ["--steer", "{w}/clamp_huge.json"], "value 1e+30 is out of range"),
    ("generate", "spec model a string", GEN + ["--steer", "{w}/model_str.json"], "`model` must be a mapping"),
    ("generate", "calibration a string", GEN + ["--steer", "{w}/cond_calib.json"], "`calibration` must be a mapping"),
    ("generate", "threshold NaN", GEN + ["--steer", "{w}/cond_nan.yaml"], "threshold must be a finite number"),
    ("generate", "spec a list", GEN + ["--steer", "{w}/spec_list.json"], "the spec must be a mapping"),
    ("generate", "spec not UTF-8", GEN + ["--steer", "{w}/spec_latin1.yaml"], "is not UTF-8 text"),
    ("generate", "--temperature nan", GEN + ["--temperature", "nan"], "temperature must be a finite number >= 0"),
    ("generate", "--clamp 3=1e30", GEN + ["--sae", "{w}/sae", "--clamp", "3=1e30"], "out of range; use a value within"),
    ("generate", "--clamp 3.7=1", GEN + ["--sae", "{w}/sae", "--clamp", "3.7=1"], "--clamp expects FEATURE=VALUE"),
    ("generate", "SAE NaN weights", GEN + ["--sae", "{w}/sae_nan", "--clamp", "3=1"], "W_dec holds NaN or inf"),
    ("generate", "SAE layer 'one'", GEN + ["--sae", "{w}/sae_layer", "--clamp", "3=1"], "must be a block index"),
    ("generate", "SAE of another model", GEN + ["--sae", "{w}/sae_other", "--clamp", "3=1"], "was trained on someone/else"),
    ("generate", "SAE negative d_in", GEN + ["--sae", "{w}/syn_neg", "--clamp", "3=1"], "d_in = -64 must be positive"),
    ("generate", "SAE absurd d_sae", GEN + ["--sae", "{w}/syn_huge", "--clamp", "3=1"], "config says [64, 1000000000000]"),
    # harvest
    ("harvest", "--max-tokens 0", HARVEST + ["--layer", "1", "--max-tokens", "0"], "max_tokens must be at least 1, got 0"),
    ("harvest", "--batch-size 0", HARVEST + ["--layer", "1", "--batch-size", "0"], "batch_size must be at least 1"),
    ("harvest", "--context-length 1", HARVEST + ["--layer", "1", "--context-length", "1"], "context_length must be at least 2"),
    ("harvest", "dataset not UTF-8", HARVEST + ["--layer", "1", "--dataset", "{w}/latin1.txt"], "latin1.txt is not UTF-8 text"),
    ("harvest", "layer out of range", HARVEST + ["--layer", "9"], "layer 9 is out of range"),
    ("harvest", "--out a file", HARVEST + ["--layer", "1", "--out", "{w}/out_file"], "cannot create folder"),
    ("harvest", "manifest a list", HARVEST + ["--layer", "1", "--out", "{w}/acts_list"], "is a JSON list, not a manifest object"),
    # train
    ("train", "--lr nan", TRAIN + ["--lr", "nan"], "lr must be a positive finite number, got nan"),
    ("train", "--lr inf", TRAIN + ["--lr", "inf"], "lr must be a positive finite number, got inf"),
    ("train", "--checkpoint-every 0", TRAIN + ["--checkpoint-every", "0"], "checkpoint_every must be at least 1, got 0"),
    ("train", "--k-aux -1", TRAIN + ["--k-aux", "-1"], "k_aux must be at least 1, got -1"),
    ("train", "--warmup-steps -5", TRAIN + ["--warmup-steps", "-5"], "warmup_steps must be at least 0, got -5"),
    ("train", "--ce-contexts -1", TRAIN + ["--ce-contexts", "-1"], "ce_contexts must be at least 0, got -1"),
    ("train", "--holdout-tokens 0", TRAIN + ["--holdout-tokens", "0"], "holdout_tokens must be at least 1"),
    ("train", "--auxk-coef nan", TRAIN + ["--auxk-coef", "nan"], "auxk_coef must be >= 0"),
    ("train", "--eval-tokens 0", TRAIN + ["--eval-tokens", "0"], "eval_tokens must be at least 1"),
    ("train", "manifest a list", [*TRAIN[:1], "{w}/acts_list", *TRAIN[2:]], "is a JSON list, not a manifest object"),
    ("train", "manifest counts too many", [*TRAIN[:1], "{w}/acts_more", *TRAIN[2:]], "holds 2048 tokens but the manifest counts 4096"),
    ("train", "missing shard", [*TRAIN[:1], "{w}/acts_missing", *TRAIN[2:]], "lists 1 shard(s) that are missing"),
    ("train", "shards without tokens", [*TRAIN[:1], "{w}/acts_notokens", *TRAIN[2:]], "shard entry 0 has no 'tokens'"),
    ("train", "shards as strings", [*TRAIN[:1], "{w}/acts_shardstr", *TRAIN[2:]], "not an object with file, tokens and contexts"),
    ("train", "--out a file", TRAIN + ["--out", "{w}/out_file"], "cannot create folder"),
    # eval sae
    ("eval sae", "negative d_in", ["eval", "sae", "{w}/syn_neg", *EVAL_SAE[3:]], "d_in = -64 must be positive"),
    ("eval sae", "absurd d_sae", ["eval", "sae", "{w}/syn_huge", *EVAL_SAE[3:]], "the weights and cfg.json belong to different SAEs"),
    ("eval sae", "NaN weights", ["eval", "sae", "{w}/syn_nan", *EVAL_SAE[3:]], "W_dec holds NaN or inf"),
    ("eval sae", "layer 1.5", ["eval", "sae", "{w}/syn_layer", *EVAL_SAE[3:]], "got 1.5"),
    ("eval sae", "--holdout-tokens 0", EVAL_SAE + ["--holdout-tokens", "0"], "holdout_tokens must be at least 1"),
    ("eval sae", "--contexts -3", EVAL_SAE + ["--contexts", "-3"], "contexts must be at least 0, got -3"),
    ("eval sae", "--batch-size 0", EVAL_SAE + ["--batch-size", "0"], "batch_size must be at least 1"),
    ("eval sae", "--out a folder", EVAL_SAE + ["--out", "{w}/out_dir"], "is a folder; give a file path"),
    ("eval sae", "missing shard", [*EVAL_SAE[:3], "--acts", "{w}/acts_missing", "--contexts", "0"], "shard(s) that are missing"),
    # discover
    ("discover", "SAE of another model", DISCOVER + ["--sae", "{w}/sae_other"], "was trained on someone/else"),
    ("discover", "SAE layer 'one'", DISCOVER + ["--sae", "{w}/sae_layer"], "must be a block index"),
    ("discover", "SAE too narrow", DISCOVER + ["--sae", "{w}/sae_narrow"], "SAE width 32 does not match"),
    ("discover", "--values nan", DISCOVER + ["--values", "nan"], "causal clamp value must be a finite number"),
    ("discover", "--values 1e30", DISCOVER + ["--values", "1e30"], "is out of range"),
    ("discover", "--n-causal -1", DISCOVER + ["--n-causal", "-1"], "n_causal must be at least 1, got -1"),
    ("discover", "--rank-by magic", DISCOVER + ["--rank-by", "activation,magic"], "unknown latent ranking magic"),
    ("discover", "--set-size 0", DISCOVER + ["--set-size", "0"], "set_max_size must be at least 1, got 0"),
    ("discover", "prompts not UTF-8", DISCOVER + ["--harmful", "{w}/latin1.jsonl"], "latin1.jsonl is not UTF-8 text"),
    # eval refusal: datasets, numbers, damaged earlier runs
    ("eval refusal", "jsonl not UTF-8", REFUSAL + ["--dataset", "{w}/latin1.jsonl"], "latin1.jsonl is not UTF-8 text"),
    ("eval refusal", "csv not UTF-8", REFUSAL + ["--dataset", "{w}/latin1.csv"], "latin1.csv is not UTF-8 text"),
    ("eval refusal", "txt not UTF-8", REFUSAL + ["--dataset", "{w}/latin1.txt"], "latin1.txt is not UTF-8 text"),
    ("eval refusal", "row a list", REFUSAL + ["--dataset", "{w}/listrow.jsonl"], "row 0 is list"),
    ("eval refusal", "json rows numbers", REFUSAL + ["--dataset", "{w}/list.json"], "row 0 is int 1, not an object"),
    ("eval refusal", "prompt a number", REFUSAL + ["--dataset", "{w}/numprompt.jsonl"], "expected text or a list of messages"),
    ("eval refusal", "message without role", REFUSAL + ["--dataset", "{w}/badconv.jsonl"], "message 0 needs a role"),
    ("eval refusal", "--limit 0", REFUSAL + ["--limit", "0"], "limit must be at least 1, got 0"),
    ("eval refusal", "--limit -1", REFUSAL + ["--limit", "-1"], "limit must be at least 1, got -1"),
    ("eval refusal", "--batch-size 0", REFUSAL + ["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    ("eval refusal", "run.json a list", REFUSAL + ["--out", "{w}/ev_runlist"], "is not a run record"),
    ("eval refusal", "row without id", REFUSAL + ["--out", "{w}/ev_noid"], "row 1 has no 'id'"),
    ("eval refusal", "responses not UTF-8", REFUSAL + ["--out", "{w}/ev_latin1"], "responses.jsonl is not UTF-8 text"),
    ("eval refusal", "threshold NaN", REFUSAL + ["--steer", "{w}/cond_nan.yaml"], "threshold must be a finite number"),
    ("eval refusal", "--out a file", REFUSAL + ["--out", "{w}/out_file"], "cannot create folder"),
    ("eval refusal", "--unsteered no run", REFUSAL + ["--unsteered", "{w}"], "holds no `saesteer eval refusal` run"),
    # eval capability
    ("eval capability", "--limit 0", CAPABILITY + ["--limit", "0"], "limit must be at least 1"),
    ("eval capability", "--batch-size 0", CAPABILITY + ["--batch-size", "0"], "batch_size and chunk must be at least 1"),
    ("eval capability", "spec key positons", CAPABILITY + ["--steer", "{w}/typo_top.json"], "did you mean 'positions'?"),
    ("eval capability", "run.json a list", CAPABILITY + ["--out", "{w}/ev_runlist"], "is not a run record"),
    # eval multiturn
    ("eval multiturn", "dataset not UTF-8", REPLAY + ["--dataset", "{w}/latin1.jsonl"], "latin1.jsonl is not UTF-8 text"),
    ("eval multiturn", "message without role", REPLAY + ["--dataset", "{w}/badconv.jsonl"], "message 0 needs a role"),
    ("eval multiturn", "--limit 0", REPLAY + ["--dataset", "bundled:harmful", "--limit", "0"], "--limit must be at least 1"),
    ("eval multiturn", "--temperature nan", REPLAY + ["--dataset", "bundled:harmful", "--temperature", "nan"], "temperature must be a finite number"),
    ("eval multiturn", "--threshold nan", ["eval", "multiturn", "{m}", "--out", "{out}", "--threshold", "nan"], "threshold must be in (0, 1]"),
    ("eval multiturn", "spec key valeu", REPLAY + ["--steer", "{w}/typo_valeu.json"], "did you mean 'value'?"),
    # sweep
    ("sweep", "--limit 0", SWEEP + ["--limit", "0"], "refusal_limit must be at least 1, got 0"),
    ("sweep", "--spec missing", SWEEP + ["--spec", "{w}/nosuch.yaml"], "nosuch.yaml not found"),
    ("sweep", "--methods sae_add", SWEEP + ["--methods", "none,sae_add"],
     "sae_add settings come from `saesteer search`: pass the spec it writes with --spec"),
    ("sweep", "--capability-limit -1", SWEEP + ["--capability-limit", "-1"], "capability_limit must be at least 1"),
    ("sweep", "--values nan", SWEEP + ["--values", "nan"], "sweep clamp value must be a finite number"),
    ("sweep", "--values 1e30", SWEEP + ["--values", "1e30"], "is out of range"),
    ("sweep", "--strengths nan", SWEEP + ["--strengths", "nan"], "sweep strength value must be a finite number"),
    ("sweep", "--features 3.7", SWEEP + ["--features", "3.7"], "--features expects comma-separated latent indices"),
    ("sweep", "features.json a list", SWEEP + ["--discovery", "{w}/disc_bad"], "is not a discovery result"),
    ("sweep", "--out a file", SWEEP + ["--out", "{w}/out_file"], "cannot create folder"),
    # search
    ("search", "--rungs not increasing", SEARCH + ["--rungs", "8,4"], "--rungs must be increasing prompt counts"),
    ("search", "--rungs 1.5", SEARCH + ["--rungs", "1.5"], "--rungs expects comma-separated whole numbers"),
    ("search", "--max-over-refusal 2", SEARCH + ["--max-over-refusal", "2"], "--max-over-refusal must be a share"),
    ("search", "--choose-from all", SEARCH + ["--choose-from", "all"], "--choose-from must be sae, all_sae, any"),
    ("search", "--keep 0", SEARCH + ["--keep", "0"], "--keep must be a share in (0, 1]"),
    ("search", "--target-fprs 1", SEARCH + ["--target-fprs", "1"], "--target-fprs must be shares in [0, 1)"),
    ("search", "no discovery", SEARCH + ["--discovery", "{w}/out_dir"], "has no features.json"),
    ("search", "unknown method", SEARCH + ["--methods", "sae_sub"], "unknown search method(s) sae_sub"),
    ("search", "unknown gate", SEARCH + ["--gates", "none,magic"], "unknown gate 'magic'"),
    ("search", "no latent passed the causal check", SEARCH + ["--methods", "sae_clamp"],
     "passed discovery's causal check"),
    # report
    ("report", "results row a list", ["report", "{w}/sweep_listrow"], "results.jsonl:2 is a JSON list, not an object"),
    ("report", "results row without name", ["report", "{w}/sweep_noname"], "has no 'name'"),
    ("report", "results not UTF-8", ["report", "{w}/sweep_latin1"], "results.jsonl is not UTF-8 text"),
    ("report", "--out a file", ["report", "{w}/sweep_ok", "--out", "{w}/out_file"], "cannot create folder"),
    ("report", "no sweep", ["report", "{w}/out_dir"], "has no results.jsonl"),
    ("report", "no folder", ["report", "{w}/no_such_sweep"], "does not exist; give the --out folder of a saesteer sweep"),
    ("eval refusal", "bundled subset misspelt", REFUSAL + ["--dataset", "bundled:harmfull@test"],
     "unknown bundled subset 'harmfull' (did you mean bundled:harmful?)"),
    # judge
    ("judge", "--batch-size 0", JUDGE + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("judge", "--batch-size -1", JUDGE + ["--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
    ("judge", "--out a folder", JUDGE + ["--out", "{w}/out_dir"], "is a folder; give a file path"),
    ("judge", "input not UTF-8", ["judge", "--input", "{w}/pairs_latin1.jsonl", "--out", "{out}/j.jsonl"], "is not UTF-8 text"),
    ("judge", "--out not UTF-8", JUDGE + ["--out", "{w}/latin1.jsonl"], "latin1.jsonl is not UTF-8 text"),
    ("judge", "--out rows not objects", JUDGE + ["--out", "{w}/judged_list.jsonl"], "is a JSON list, not an object"),
    ("judge", "classifier weights a list", JUDGE + ["--judge", "classifier", "--weights", "{w}/weights_list.json"], "holds a JSON list, not classifier weights"),
    ("judge", "--train jsonl not UTF-8", ["judge", "--train", "{w}/labelled_latin1.jsonl", "--out", "{out}/w.json"], "is not UTF-8 text"),
    ("judge", "--train csv not UTF-8", ["judge", "--train", "{w}/latin1.csv", "--out", "{out}/w.json"], "latin1.csv is not UTF-8 text"),
    # serve start-up: checked before the model loads, or before it listens
    ("serve", "port in use", SERVE + ["--port", "{busy}"], "is already in use"),
    ("serve", "host not on this machine", ["serve", "{m}", "--api-key", "k", "--host", "192.0.2.7", "--port", "{free}"], "is not an address of this machine"),
    ("serve", "--register-sae too narrow", SERVE + ["--register-sae", "n={w}/sae_narrow"], "reads 32-wide activations"),
    ("serve", "--register-sae other model", SERVE + ["--register-sae", "n={w}/sae_other"], "was trained on someone/else"),
    ("serve", "--register spec key positons", SERVE + ["--register", "x={w}/typo_top.json"], "did you mean 'positions'?"),
    ("serve", "--steer threshold NaN", SERVE + ["--steer", "{w}/cond_nan.yaml"], "threshold must be a finite number"),
    # demo: every check before the first progress line
    ("demo", "SAE too narrow", DEMO + ["--sae", "{w}/sae_narrow"], "reads 32-wide activations"),
    ("demo", "unknown model", ["demo", "--fast", "--model", "nosuchmodel", "--out", "{out}"], "unknown model 'nosuchmodel'"),
    ("demo", "--layer 99", DEMO + ["--layer", "99"], "--layer 99 is out of range"),
    ("demo", "--layer -1", DEMO + ["--layer", "-1"], "--layer must be a block index >= 0"),
    ("demo", "missing SAE", DEMO + ["--sae", "{w}/nosuch"], "does not exist"),
    ("demo", "SAE NaN weights", DEMO + ["--sae", "{w}/sae_nan"], "W_dec holds NaN or inf"),
    ("demo", "SAE of another model", DEMO + ["--sae", "{w}/sae_other"], "was trained on someone/else"),
    ("demo", "--out a file", DEMO + ["--out", "{w}/out_file"], "is a file; choose a folder"),
    ("demo", "earlier demo, other settings", DEMO + ["--out", "{w}/demo_other"], "holds a demo run with other settings"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`: nothing that existed may change or vanish."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "runs" not in p.relative_to(root).parts[:1]}


@pytest.fixture
def ports():
    """(a port with a listener on it, a port that is free) for `serve`."""
    busy, free = socket.socket(), socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    yield busy.getsockname()[1], free_port
    busy.close()


@pytest.mark.parametrize("command,bad,args,message", CASES, ids=[f"{c}: {b}" for c, b, _, _ in CASES])
def test_bad_input_is_one_clean_line(world, ports, tmp_path, monkeypatch, capsys, command, bad, args, message):
    from saesteer.cli import main

    out = world / "runs" / re.sub(r"[^\w-]+", "_", f"{command}-{bad}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "keep.txt").write_text("an earlier output\n")
    argv = [a.format(w=world, m=world / "model", out=out, busy=ports[0], free=ports[1]) for a in args]
    before = _snapshot(world)
    monkeypatch.delenv("SAESTEER_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["saesteer", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, captured.err[-3000:]
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-3000:]
    assert message in lines[0], lines[0]
    assert (out / "keep.txt").read_text() == "an earlier output\n"
    after = _snapshot(world)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"


NO_FOLDER = [
    ("eval refusal", REFUSAL + ["--dataset", "no_such_set"], "unknown dataset"),
    ("eval capability", CAPABILITY[:-4] + ["--tasks", "mmlu_ll"], "missing mmlu/test"),
    ("discover", DISCOVER + ["--harmful", "no_such_set"], "unknown dataset"),
    ("search", SEARCH + ["--methods", "sae_add", "--unsafe", "no_such_set"], "unknown dataset"),
    ("sweep", SWEEP + ["--dataset", "no_such_set"], "unknown dataset"),
    ("sweep", SWEEP[:SWEEP.index("--tasks")] + ["--tasks", "mmlu_ll"] + SWEEP[SWEEP.index("--tasks") + 2:],
     "missing mmlu/test"),
]


@pytest.mark.parametrize("command,args,message", NO_FOLDER, ids=[f"{c}: {m}" for c, _, m in NO_FOLDER])
def test_a_data_error_leaves_no_output_folder(world, tmp_path, monkeypatch, capsys, command, args, message):
    """The data is checked before `--out` is made: a typo leaves nothing to clean up."""
    from saesteer.cli import main

    out = tmp_path / "never_made"
    argv = [a.format(w=world, m=world / "model", out=out) for a in args]
    monkeypatch.setenv("SAESTEER_DATA", str(tmp_path / "empty_data_dir"))
    (tmp_path / "empty_data_dir").mkdir()
    monkeypatch.setattr(sys, "argv", ["saesteer", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err[-2000:]
    assert not out.exists()


def test_the_table_covers_every_command():
    commands = {c for c, _, _, _ in CASES}
    assert commands >= {"harvest", "train", "eval sae", "discover", "generate", "eval refusal", "eval capability",
                        "eval multiturn", "sweep", "report", "judge", "serve", "demo"}
    assert len(CASES) >= 60


def test_a_conversation_under_prompt_is_read_as_one(world):
    from saesteer.data import load_records

    path = world / "runs" / "conversation.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                           {"from": "human", "value": "and then?"}], "label": "safe"}) + "\n")
    (record,) = load_records(str(path))
    assert record.is_conversation and record.text == "and then?" and record.label == "safe"


def test_through_the_real_entry_point(world, tmp_path):
    """The console script itself: exit code 2 and the one line, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "saesteer.cli", "generate", str(world / "model"), "hi",
                           "--steer", str(world / "typo_valeu.json")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: steering spec {world / 'typo_valeu.json'}: unknown key 'valeu' in intervention 0, feature edit 0; "
        "did you mean 'value'?"], proc.stderr


def test_misspelt_key_without_a_near_one_lists_the_valid_keys():
    from saesteer.errors import SaesteerError
    from saesteer.steer import SteeringSpec

    body = {"saesteer_spec": 1, "interventions": [{"hook": 1, "vector": "v.safetensors", "zzz": 1}]}
    with pytest.raises(SaesteerError, match=r"unknown key 'zzz' in intervention 0; valid keys: hook, sae"):
        SteeringSpec.from_dict(copy.deepcopy(body))
