import json
import math
from pathlib import Path

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.generate import GenerationConfig, generate
from saesteer.hooks import hook_point
from saesteer.steer import (ConditionSpec, FeatureEdit, FileRef, InterventionSpec, Steering, SteeringSpec,
                            sae_clamp_spec, steer)
from saesteer.steer.conditions import threshold_for_fpr
from saesteer.steer.directions import caa_direction, diff_of_means, mean_residuals, save_vectors
from saesteer.steer.interventions import DirectionIntervention, SAEFeatureIntervention
from tests.tiny import tiny_model

PROMPTS = ["Hi", "Write a poem about the sea, the waves and the shore at night.", "How do I kill a process?"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", layers=4, d=64)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, lm):
    from saesteer.sae import TopKSAE, save_sae

    sae = TopKSAE.init(64, 256, 8, seed=1)
    sae.metadata.update({"model_id": lm.model_id, "hf_hook_name": "model.layers.1", "layer": 1,
                         "hook_name": "blocks.1.hook_resid_post"})
    out = tmp_path_factory.mktemp("sae")
    save_sae(sae, out)
    return out


@pytest.fixture(scope="module")
def sae(sae_dir):
    from saesteer.sae import load_sae

    return load_sae(sae_dir)


def clamp(sae_dir, value=30.0, feature=3, positions="all", hook="model.layers.1"):
    return sae_clamp_spec(sae_dir, hook, [FeatureEdit(feature, "clamp", value)], positions=positions)


@pytest.mark.parametrize("edits", [
    [FeatureEdit(3, "clamp", 7.5)],
    [FeatureEdit(3, "clamp", 7.5), FeatureEdit(10, "add", 2.0), FeatureEdit(11, "scale", 3.0), FeatureEdit(12, "ablate")],
])
def test_error_term_form_equals_edited_reconstruction(sae, edits):
    torch.manual_seed(0)
    x = torch.randn(50, 64) * 3
    iv = SAEFeatureIntervention(sae, edits)
    steered = x + iv.delta(x)
    z = sae.encode(x)
    edited = z.clone()
    for e in edits:
        if e.op == "clamp":
            edited[:, e.feature] = e.value
        elif e.op == "add":
            edited[:, e.feature] += e.value
        elif e.op == "scale":
            edited[:, e.feature] *= e.value
        else:
            edited[:, e.feature] = 0
    reference = sae.decode(edited) + (x - sae.decode(z))
    torch.testing.assert_close(steered, reference, rtol=1e-4, atol=1e-4)
    # The clamped latent really reads back as the clamp value when re-encoded... only for latents
    # in the top-k; but the change along the decoder row is exactly (c - z_i).
    coef = iv.coefficients(x)[:, 0]
    torch.testing.assert_close(coef, edits[0].value - z[:, edits[0].feature])


def test_direction_ops():
    torch.manual_seed(0)
    x = torch.randn(10, 64)
    v = torch.randn(64)
    u = v / v.norm()
    removed = x + DirectionIntervention(v, "project_out").delta(x)
    assert (removed @ u).abs().max() < 1e-5
    set_to = x + DirectionIntervention(v, "clamp", 4.0).delta(x)
    torch.testing.assert_close(set_to @ u, torch.full((10,), 4.0))
    added = x + DirectionIntervention(v, "add", 2.0).delta(x)
    torch.testing.assert_close(added - x, (2.0 * v).expand_as(x))


def test_steering_changes_output_and_is_the_same_batched_alone_and_uncached(lm, sae_dir):
    config = GenerationConfig(max_new_tokens=10, batch_size=3)
    plain = generate(lm, PROMPTS, config)
    with steer(lm, clamp(sae_dir)):
        batched = generate(lm, PROMPTS, config)
        alone = [generate(lm, [p], config)[0] for p in PROMPTS]
        uncached = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=3, use_cache=False))
    assert [g.token_ids for g in batched] != [g.token_ids for g in plain]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone] == [g.token_ids for g in uncached]
    # hooks are gone afterwards
    assert [g.token_ids for g in generate(lm, PROMPTS, config)] == [g.token_ids for g in plain]


def test_hooks_come_off_on_exceptions(lm, sae_dir):
    module = hook_point(lm.model, 1).module
    before = len(module._forward_hooks)
    with pytest.raises(RuntimeError):
        with steer(lm, clamp(sae_dir)):
            assert len(module._forward_hooks) == before + 1
            raise RuntimeError("boom")
    assert len(module._forward_hooks) == before


def first_logits(lm, prompt, spec=None):
    ids = lm.tokenizer(lm.chat(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = {}

    def grab(rows, text):
        return True

    from saesteer.generate import ForwardInfo, CONTENT, forward_context

    with steer(lm, spec), torch.no_grad():
        info = ForwardInfo(roles=torch.full_like(ids, CONTENT), rows=torch.tensor([0]), prefill=True)
        with forward_context(info):
            out["logits"] = lm.model(input_ids=ids).logits[0, -1]
    return out["logits"]


def test_positions(lm, sae_dir):
    base = first_logits(lm, "Hi")
    assert torch.equal(first_logits(lm, "Hi", clamp(sae_dir, positions="generated")), base)
    assert not torch.equal(first_logits(lm, "Hi", clamp(sae_dir, positions="prompt")), base)
    assert not torch.equal(first_logits(lm, "Hi", clamp(sae_dir, positions="all")), base)
    config = GenerationConfig(max_new_tokens=8)
    with steer(lm, clamp(sae_dir, positions="generated")):
        gen_only = generate(lm, ["Hi"], config)[0]
    plain = generate(lm, ["Hi"], config)[0]
    assert gen_only.token_ids[0] == plain.token_ids[0]


def _conditional_spec(lm, tmp_path, sae_dir, detector_layer):
    # A direction detector that separates prompt A from prompt B at the detector layer.
    res = mean_residuals(lm, [PROMPTS[1], PROMPTS[0]], [detector_layer], select="content")[detector_layer]
    vec = res[0] - res[1]
    save_vectors(tmp_path / "cond.safetensors", {"cond": vec})
    scores = (res / res.norm(dim=-1, keepdim=True)) @ (vec / vec.norm())
    threshold = float(scores.mean())
    spec = clamp(sae_dir)
    spec.condition = ConditionSpec(detector="direction", hook=f"model.layers.{detector_layer}", pooling="mean",
                                   vector=FileRef(str(tmp_path / "cond.safetensors"), key="cond"), threshold=threshold)
    return spec


@pytest.mark.parametrize("detector_layer", [1, 3])  # same forward pass / pre-pass
def test_conditional_steering_decides_per_row(lm, sae_dir, tmp_path, detector_layer):
    spec = _conditional_spec(lm, tmp_path, sae_dir, detector_layer)
    config = GenerationConfig(max_new_tokens=8, batch_size=2)
    plain = generate(lm, PROMPTS[:2], config)
    with steer(lm, clamp(sae_dir)):
        always = generate(lm, PROMPTS[:2], config)
    steering = Steering(lm, spec)
    with steering.active():
        cond = generate(lm, PROMPTS[:2], config)
    assert steering.gate.decisions == {0: False, 1: True}
    assert cond[0].token_ids == plain[0].token_ids
    assert cond[1].token_ids == always[1].token_ids


def test_multi_turn_conversations_are_re_decided_each_turn(lm, sae_dir, tmp_path):
    spec = _conditional_spec(lm, tmp_path, sae_dir, 1)
    steering = Steering(lm, spec)
    with steering.active():
        generate(lm, [PROMPTS[0]], GenerationConfig(max_new_tokens=4))
        assert steering.gate.decisions[0] is False
        conversation = [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": PROMPTS[1]}]
        generate(lm, [conversation], GenerationConfig(max_new_tokens=4))
        assert steering.gate.decisions[0] is True


def test_last_turn_scope_ignores_a_trigger_in_earlier_turns(lm, sae_dir, tmp_path):
    spec = _conditional_spec(lm, tmp_path, sae_dir, 1)
    earlier_trigger = [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": "ok"},
                       {"role": "user", "content": PROMPTS[0]}]
    decisions = {}
    for scope in ("prompt", "last_turn"):
        spec.condition.scope = scope
        steering = Steering(lm, spec)
        with steering.active():
            generate(lm, [earlier_trigger, PROMPTS[1]], GenerationConfig(max_new_tokens=2, batch_size=2))
        decisions[scope] = dict(steering.gate.decisions)
    assert decisions["prompt"] == {0: True, 1: True}  # max pooling over the whole prompt sees turn 1
    assert decisions["last_turn"] == {0: False, 1: True}  # only the final message decides


def test_window_pooling_scores_the_best_stretch_of_a_long_prompt():
    from saesteer.steer.conditions import pool

    scores = torch.tensor([[0.0, 0, 0, 0, 5, 5, 0, 0], [1.0, 3, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[True] * 8, [True, True] + [False] * 6])
    assert pool(scores, mask, "mean").tolist() == [1.25, 2.0]
    # The request's two tokens stand out of the wrapper; a prompt shorter than the window gets its mean.
    assert pool(scores, mask, "window2").tolist() == [5.0, 2.0]
    assert pool(scores, mask, "window4").tolist() == [2.5, 2.0]
    for bad in ("window", "window0", "windows", "median"):
        with pytest.raises(SaesteerError, match="unknown condition pooling.*window16"):
            ConditionSpec(detector="probe", hook="model.layers.1", threshold=0.0, pooling=bad,
                          vector=FileRef("v.safetensors"))


def test_threshold_for_fpr():
    neg = torch.arange(100).float()
    t = threshold_for_fpr(neg, 0.05)
    assert (neg > t).float().mean() <= 0.05


def test_spec_roundtrip_and_hash(tmp_path, sae_dir, sae):
    spec = clamp(sae_dir)
    spec.interventions[0].sae.sha256 = sae.content_hash()
    spec.model = {"id": "tiny-random/llama"}
    for name in ("spec.yaml", "spec.json"):
        spec.save(tmp_path / name)
        loaded = SteeringSpec.load(tmp_path / name)
        # Saved paths are relative to the spec's folder; they resolve to the same files.
        assert loaded.to_dict() == spec.with_paths(tmp_path).to_dict()
        assert loaded.hash() == spec.with_paths(tmp_path).hash()
        assert loaded.resolve_path(loaded.interventions[0].sae).resolve() == Path(sae_dir).resolve()
    other = clamp(sae_dir, value=31.0)
    assert other.hash() != spec.hash()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(saesteer_spec=2), "version"),
    (lambda d: d["interventions"][0]["features"][0].update(feature=10_000), "out of range"),
    (lambda d: d["interventions"][0]["features"][0].update(value=math.nan), "finite"),
    (lambda d: d["interventions"][0].update(hook="model.layers.9"), "out of range"),
    (lambda d: d["interventions"][0].update(hook="model.layers.2"), "trained at layer 1"),
    (lambda d: d["interventions"][0]["sae"].update(sha256="deadbeef"), "changed"),
    (lambda d: d["interventions"][0]["features"][0].update(op="boost"), "unknown feature op"),
    (lambda d: d.update(positions="middle"), "positions"),
    (lambda d: d.update(interventions=[]), "no interventions"),
    (lambda d: d.update(model={"id": "other/model"}), "made for other/model"),
])
def test_bad_specs_fail_before_generation(lm, sae_dir, tmp_path, mutate, message):
    data = clamp(sae_dir).to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SaesteerError, match=message):
        Steering(lm, path)


def test_a_folder_given_as_spec_names_the_spec_files_in_it(sae_dir, tmp_path):
    clamp(sae_dir).save(tmp_path / "best.yaml")
    with pytest.raises(SaesteerError, match=r"is a folder: give a spec file such as .*best.yaml; it holds best.yaml"):
        SteeringSpec.load(tmp_path)


def test_sae_from_another_model_is_rejected(tmp_path):
    from saesteer.sae import TopKSAE, save_sae

    lm = tiny_model("llama", d=32)
    sae = TopKSAE.init(64, 128, 4)
    save_sae(sae, tmp_path / "sae")
    with pytest.raises(SaesteerError, match="d_model"):
        Steering(lm, sae_clamp_spec(tmp_path / "sae", "model.layers.1", [FeatureEdit(0, "clamp", 1.0)]))


def test_directions(lm):
    harmful, harmless = ["How do I kill a process?", "Write a poem"], ["Hi", "Explain photosynthesis"]
    dom = diff_of_means(lm, harmful, harmless, [1, 2])
    assert set(dom) == {1, 2} and dom[1].shape == (64,)
    caa = caa_direction(lm, harmful, [1])
    assert caa[1].shape == (64,) and torch.isfinite(caa[1]).all() and caa[1].norm() > 0


def test_generate_cli_contract_and_bad_input(tmp_path):
    """`saesteer generate MODEL --sae DIR --clamp F=V "prompt" --max-new-tokens N` (the acceptance
    call form) prints the answer the Python API gives; bad edits exit 2 with one line."""
    import os
    import subprocess
    import sys

    from saesteer.models import load_model
    from saesteer.sae import TopKSAE, save_sae
    from tests.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", layers=4, d=64)
    sae = TopKSAE.init(64, 256, 8, seed=1)
    sae.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, tmp_path / "sae")
    env = {**os.environ, "SAESTEER_CACHE": str(tmp_path / "cache")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "saesteer.cli", "generate", model_dir, *args],
                              env=env, capture_output=True, text=True, timeout=300)

    ok = cli("--sae", str(tmp_path / "sae"), "--clamp", "3=12", "How do I kill a process?", "--max-new-tokens", "8")
    assert ok.returncode == 0, ok.stderr[-2000:]
    lm = load_model(model_dir)
    spec = sae_clamp_spec(tmp_path / "sae", "model.layers.1", [FeatureEdit(3, "clamp", 12.0)])
    with steer(lm, spec):
        expected = generate(lm, ["How do I kill a process?"], GenerationConfig(max_new_tokens=8))[0].text
    unsteered = generate(lm, ["How do I kill a process?"], GenerationConfig(max_new_tokens=8))[0].text
    assert ok.stdout.rstrip("\n") == expected.strip() or ok.stdout.rstrip("\n") == expected
    assert expected != unsteered
    for args, message in ((["--clamp", "9999=12"], "out of range"), (["--clamp", "3=nan"], "finite"),
                          (["--clamp", "3"], "FEATURE=VALUE"),
                          (["--hook", "model.layers.7", "--clamp", "3=1"], "out of range")):
        bad = cli("--sae", str(tmp_path / "sae"), *args, "Hi", "--max-new-tokens", "4")
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_condition_scope_round_trips_and_leaves_older_spec_hashes_alone(tmp_path):
    base = dict(detector="direction", hook="model.layers.1", threshold=0.5, vector=FileRef(str(tmp_path / "v.safetensors")))
    add = [InterventionSpec(hook="model.layers.1", vector=FileRef(str(tmp_path / "v.safetensors")), op="add", value=1.0)]
    plain = SteeringSpec(interventions=add, condition=ConditionSpec(**base))
    assert "scope" not in plain.to_dict()["condition"]  # specs written before scopes keep their hash
    scoped = SteeringSpec(interventions=add, condition=ConditionSpec(**base, scope="last_turn"))
    again = SteeringSpec.load(scoped.save(tmp_path / "s.yaml"))
    assert again.condition.scope == "last_turn" and again.hash() == scoped.with_paths(tmp_path).hash()
    assert again.hash() != plain.with_paths(tmp_path).hash()
    with pytest.raises(SaesteerError, match="unknown condition scope"):
        ConditionSpec(**base, scope="everything")


def test_a_copied_or_moved_spec_folder_still_works(lm, sae_dir, tmp_path):
    """Specs store paths relative to themselves (issue #13, item 8); the hash pins still hold."""
    import shutil

    from saesteer.sae import load_sae

    a = tmp_path / "a"
    shutil.copytree(sae_dir, a / "sae")
    spec = sae_clamp_spec((a / "sae").resolve(), "model.layers.1", [FeatureEdit(3, "clamp", 7.0)],
                          sha256=load_sae(a / "sae").content_hash())
    spec.save(a / "specs" / "clamp.yaml")
    assert SteeringSpec.load(a / "specs" / "clamp.yaml").interventions[0].sae.path == "../sae"
    before = SteeringSpec.load(a / "specs" / "clamp.yaml").hash()
    shutil.move(a, tmp_path / "b")
    moved = SteeringSpec.load(tmp_path / "b" / "specs" / "clamp.yaml")
    assert moved.hash() == before
    with Steering(lm, moved).active():
        generate(lm, ["hi"], GenerationConfig(max_new_tokens=2))
    weights = tmp_path / "b" / "sae" / "sae_weights.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    tensors["W_dec"][0, 0] += 1.0
    save_file(tensors, str(weights))
    with pytest.raises(SaesteerError, match="has changed since the spec was written"):
        Steering(lm, SteeringSpec.load(tmp_path / "b" / "specs" / "clamp.yaml"))


def test_an_sae_interventions_op_lives_under_its_features():
    """`op: ad` beside an SAE intervention was read and ignored; it is a misplaced or misspelt edit."""
    with pytest.raises(SaesteerError, match="belongs to each entry under `features`"):
        InterventionSpec(hook="model.layers.1", sae=FileRef("sae"), features=[FeatureEdit(1, "clamp", 2.0)], op="ad")
    InterventionSpec(hook="model.layers.1", sae=FileRef("sae"), features=[FeatureEdit(1, "clamp", 2.0)])


def test_a_copied_spec_says_its_paths_are_read_from_its_own_folder(tmp_path, lm):
    """A spec copied away from its SAE names the folder it looked in and the fix."""
    import shutil

    spec = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=FileRef("sae"),
                                                        features=[FeatureEdit(1, "clamp", 2.0)])])
    (tmp_path / "run").mkdir()
    spec.save(tmp_path / "run" / "best.yaml")
    shutil.copy(tmp_path / "run" / "best.yaml", tmp_path / "copy.yaml")
    with pytest.raises(SaesteerError, match=r"relative to the spec's folder .*; keep the spec beside its files"):
        Steering(lm, SteeringSpec.load(tmp_path / "copy.yaml"))


def test_specs_sharing_a_batch_each_steer_only_their_own_rows(lm, sae_dir):
    """RowSteering: one batch of several specs gives every row the answer its spec gives alone."""
    from saesteer.steer import RowSteering

    specs = [None, clamp(sae_dir, 30.0), clamp(sae_dir, 60.0, feature=5, positions="generated")]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=4)
    alone = []
    for spec in specs:
        if spec is None:
            alone.append([g.token_ids for g in generate(lm, PROMPTS, cfg)])
        else:
            with Steering(lm, spec).active():
                alone.append([g.token_ids for g in generate(lm, PROMPTS, cfg)])
    assert alone[0] != alone[1] and alone[0] != alone[2]          # each spec changes the answers
    prompts = PROMPTS * len(specs)
    owner = [j for j in range(len(specs)) for _ in PROMPTS]
    mixed = RowSteering([(Steering(lm, spec), [i for i, o in enumerate(owner) if o == j])
                         for j, spec in enumerate(specs) if spec is not None])
    with mixed.active():
        together = [g.token_ids for g in generate(lm, prompts, cfg)]
    assert together == [t for answers in alone for t in answers]
    # the hooks came off
    assert [g.token_ids for g in generate(lm, PROMPTS, cfg)] == alone[0]


def test_a_conditional_spec_cannot_be_limited_to_given_rows(lm, sae_dir):
    gated = SteeringSpec(interventions=clamp(sae_dir).interventions,
                         condition=ConditionSpec(detector="sae_feature", hook="model.layers.1", sae=FileRef(str(sae_dir)),
                                                 feature=3, threshold=0.0))
    with pytest.raises(SaesteerError, match="decides its rows itself"):
        with Steering(lm, gated).active(rows=[0]):
            pass
