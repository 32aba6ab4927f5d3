import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.hooks import block_list, capture, hook_point, run_until_stopped
from tests.tiny import ARCHITECTURES, tiny_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hook_reads_hidden_states_after_block(arch):
    lm = tiny_model(arch)
    ids = lm.tokenizer("How do I kill a Python process?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    n = lm.n_layers
    # hidden_states[-1] is after the final norm in most families, so compare blocks 0..n-2.
    for layer in range(n - 1):
        with torch.no_grad(), capture(lm.model, [layer], stop=False) as acts:
            lm.model(input_ids=ids)
        torch.testing.assert_close(acts[layer], ref[layer + 1], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_names_resolve_to_the_same_block(arch):
    lm = tiny_model(arch)
    path, blocks = block_list(lm.model)
    for where in (2, "2", f"{path}.2", "layers.2" if "layers" in path else "h.2", "blocks.2.hook_resid_post", -2):
        point = hook_point(lm.model, where)
        assert point.layer == 2 and point.module is blocks[2] and point.name == f"{path}.2"


def test_bad_hooks_fail_clearly(tiny_llama):
    with pytest.raises(SaesteerError, match="out of range"):
        hook_point(tiny_llama.model, 4)
    with pytest.raises(SaesteerError, match="unknown hook"):
        hook_point(tiny_llama.model, "model.embed_tokens")
    with pytest.raises(SaesteerError, match="not a module"):
        hook_point(tiny_llama.model, "transformer.h.1")


def test_stopped_forward_matches_full_forward(tiny_llama):
    lm = tiny_llama
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        with capture(lm.model, [0, 1]) as acts:
            run_until_stopped(lambda: lm.model(input_ids=ids))
    torch.testing.assert_close(acts[1], ref[2])
    torch.testing.assert_close(acts[0], ref[1])
