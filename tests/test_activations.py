import pytest
import torch

from saesteer.activations import ActivationStore, HarvestConfig, Manifest, harvest
from saesteer.errors import SaesteerError
from saesteer.hooks import capture, run_until_stopped
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def config(**kw):
    base = dict(layers=[1, 2], dataset="bundled", max_tokens=1500, context_length=64, batch_size=4, shard_tokens=500)
    base.update(kw)
    return HarvestConfig(**base)


def test_harvest_writes_shards_matching_a_plain_forward(tmp_path, lm):
    manifest = harvest(lm, tmp_path, config(), progress=False)
    assert manifest.complete and manifest.n_tokens >= 1500 and len(manifest.shards) >= 3
    assert manifest.hooks == ["model.layers.1", "model.layers.2"]
    store = ActivationStore(tmp_path, 2)
    from safetensors.torch import load_file

    first = load_file(str(tmp_path / manifest.shards[0]["file"]))
    ids = first["token_ids"][:63].long()
    # the first context's tokens after the dropped first token
    assert store.load_shard(0).shape[1] == 64
    # Recompute the first context and compare the stored activations.
    from saesteer.activations import contexts, token_stream
    from saesteer.data import corpus_documents

    ctx = next(contexts(token_stream(lm, corpus_documents("bundled", seed=0)), 64))
    assert ids.tolist() == ctx[1:]
    with torch.no_grad(), capture(lm.model, [2]) as acts:
        run_until_stopped(lambda: lm.model(input_ids=torch.tensor([ctx])))
    torch.testing.assert_close(store.load_shard(0)[:63], acts[2][0, 1:].half().float())


def test_resume_after_interruption_gives_the_same_shards(tmp_path, lm):
    full = harvest(lm, tmp_path / "full", config(), progress=False)
    part = harvest(lm, tmp_path / "part", config(max_tokens=700), progress=False)
    assert part.n_tokens < full.n_tokens
    resumed = harvest(lm, tmp_path / "part", config(), progress=False)
    assert resumed.n_tokens == full.n_tokens
    a, b = ActivationStore(tmp_path / "full", 1), ActivationStore(tmp_path / "part", 1)
    assert torch.equal(a.all(list(range(len(a.shards)))), b.all(list(range(len(b.shards)))))
    # Dropping a layer on resume is allowed; adding one is not.
    harvest(lm, tmp_path / "part", config(layers=[1], max_tokens=2000), progress=False)
    assert Manifest.load(tmp_path / "part").hooks == ["model.layers.1"]
    with pytest.raises(SaesteerError, match="subset"):
        harvest(lm, tmp_path / "part", config(layers=[1, 3], max_tokens=2500), progress=False)


def test_batches_are_deterministic_and_skippable(tmp_path, lm):
    harvest(lm, tmp_path, config(), progress=False)
    store = ActivationStore(tmp_path, 1)
    train, held = store.split(400)
    assert held and not set(train) & set(held)
    all_batches = list(store.batches(train, 128, seed=3))
    again = list(store.batches(train, 128, seed=3, skip_batches=2))
    assert len(again) == len(all_batches) - 2
    for x, y in zip(all_batches[2:], again):
        assert torch.equal(x, y)


def test_bad_harvest_input(tmp_path, lm):
    with pytest.raises(SaesteerError, match="out of range"):
        harvest(lm, tmp_path, config(layers=[7]), progress=False)
    with pytest.raises(SaesteerError, match="no_such"):
        harvest(lm, tmp_path / "x", config(dataset="no_such"), progress=False)
    with pytest.raises(SaesteerError, match="not an activation folder"):
        ActivationStore(tmp_path / "nothing")
    harvest(lm, tmp_path / "y", config(), progress=False)
    with pytest.raises(SaesteerError, match="choose one with --layer"):
        ActivationStore(tmp_path / "y")
    shard = tmp_path / "y" / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(SaesteerError, match="corrupt"):
        ActivationStore(tmp_path / "y", 1).load_shard(0)


def test_corpus_specs_joined_with_plus_mix_both_sources(tmp_path):
    import json

    from saesteer.data import corpus_documents

    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                {"role": "assistant", "content": "Hello there."}]}) + "\n")
    offline = corpus_documents("offline", seed=0)
    mixed = corpus_documents(f"offline+{answers}", seed=0)
    assert len(mixed) == len(offline) + 1
    assert [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}] in mixed
