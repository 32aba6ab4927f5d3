"""The sweep grid: specs written under specs/ travel with the sweep and its discovery folder."""

import json
import shutil

from saesteer.evaluate.sweep import SweepConfig, build_grid
from saesteer.sae import TopKSAE, save_sae
from saesteer.steer import ConditionSpec, FeatureEdit, FileRef, InterventionSpec, Steering, SteeringSpec
from tests.tiny import tiny_model


def _discovery(root, absolute: bool) -> None:
    """A discovery folder as `saesteer discover` writes it (absolute: as older versions did)."""
    sae = TopKSAE.init(64, 128, 8, seed=3)
    sae.metadata.update({"hf_hook_name": "model.layers.1", "layer": 1})
    save_sae(sae, root / "sae")
    sae_path = str((root / "sae").resolve()) if absolute else "../sae"
    (root / "disc").mkdir()
    (root / "disc" / "features.json").write_text(json.dumps({
        "sae": {"path": sae_path, "sha256": None, "hook": "model.layers.1"},
        "features": [{"feature": 3, "best_value": 2.0}]}))
    ref = FileRef(str((root / "sae").resolve()))
    SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=ref, features=[FeatureEdit(3, "clamp", 2.0)])],
                 condition=ConditionSpec(detector="sae_feature", hook="model.layers.1", sae=ref, feature=5,
                                         threshold=0.5)).save(root / "disc" / "conditional.yaml")


def test_sweep_specs_are_relative_and_survive_a_move(tmp_path):
    lm = tiny_model("llama", layers=4, d=64)
    config = dict(methods=("sae_clamp", "conditional_sae_clamp"), clamp_values=(1.0,))
    hashes = {}
    for absolute in (False, True):
        root = tmp_path / f"a{absolute}"
        _discovery(root, absolute)
        grid = build_grid(lm, root / "sweep", SweepConfig(discovery=str(root / "disc"), **config))
        saved = (root / "sweep" / "specs" / "sae_clamp-3-1.yaml").read_text()
        assert "path: ../../sae" in saved and str(tmp_path) not in saved
        assert "path: ../../sae" in (root / "sweep" / "specs" / "conditional_sae_clamp-3-1.yaml").read_text()
        hashes[absolute] = [p.spec.hash() for p in grid]
        if absolute:
            continue  # an older features.json names the SAE absolutely: that folder cannot move
        moved = tmp_path / f"b{absolute}"
        shutil.move(root, moved)
        again = build_grid(lm, moved / "sweep", SweepConfig(discovery=str(moved / "disc"), **config))
        assert [p.spec.hash() for p in again] == hashes[absolute]  # a moved sweep resumes its runs
        for point in again:
            Steering(lm, SteeringSpec.load(moved / "sweep" / "specs" / f"{point.name}.yaml"))
    assert hashes[False] == hashes[True]  # older discovery folders give the same specs


def test_spec_points_are_grouped_by_what_they_steer_with_and_their_gate(tmp_path):
    import yaml

    from saesteer.evaluate.sweep import GridPoint, collect, spec_family

    _discovery(tmp_path, absolute=False)
    gated = SteeringSpec.load(tmp_path / "disc" / "conditional.yaml")
    ungated = SteeringSpec(interventions=gated.interventions)
    dense = {"interventions": [{"hook": "1", "vector": {"path": "v.safetensors"}, "op": "add"}]}
    assert GridPoint("g", "spec", spec=gated).family == "sae_spec_gated"
    assert GridPoint("u", "spec", spec=ungated).family == "sae_spec"
    assert spec_family(dense) == "dense_spec"
    assert spec_family({**dense, "condition": {"detector": "probe"}}) == "dense_spec_gated"
    assert GridPoint("c", "caa", spec=None).family == "caa"
    # A point written before families existed is read from its copied spec file.
    out = tmp_path / "sweep"
    (out / "specs").mkdir(parents=True)
    (out / "specs" / "old.yaml").write_text(yaml.safe_dump(gated.to_dict()))
    (out / "runs" / "old").mkdir(parents=True)
    (out / "runs" / "old" / "point.json").write_text(json.dumps({"name": "old", "method": "spec"}))
    (out / "runs" / "old" / "kl").mkdir()
    (out / "runs" / "old" / "kl" / "summary.json").write_text(json.dumps({"mean_kl": 0.1}))
    assert [r["family"] for r in collect(out)] == ["sae_spec_gated"]


def test_dense_baselines_without_a_layer_name_the_layer_the_given_specs_steer_at(tmp_path):
    import pytest

    from saesteer.errors import SaesteerError

    lm = tiny_model("llama", layers=4, d=64)
    _discovery(tmp_path, absolute=False)
    config = SweepConfig(methods=("caa",), specs=(str(tmp_path / "disc" / "conditional.yaml"),))
    with pytest.raises(SaesteerError, match="need --direction-layer .*; the --spec files steer at layer 1"):
        build_grid(lm, tmp_path / "sweep", config)
