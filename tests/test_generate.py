import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.generate import CONTENT, GENERATED, TEMPLATE, GenerationConfig, forward_info, generate
from saesteer.hooks import forward_hooks, hook_point
from tests.tiny import tiny_model

PROMPTS = ["Hi", "Write a poem about the sea, the waves and the shore at night.", "How do I kill a process?",
           [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Sure, here is"},
            {"role": "user", "content": "more please"}]]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_greedy_is_the_same_alone_and_in_a_padded_batch(arch):
    lm = tiny_model(arch)
    config = GenerationConfig(max_new_tokens=12, batch_size=4)
    batched = generate(lm, PROMPTS, config)
    for prompt, gen in zip(PROMPTS, batched):
        alone = generate(lm, [prompt], config)[0]
        assert alone.token_ids == gen.token_ids
    assert all(g.n_new_tokens > 0 for g in batched)


def test_matches_hf_generate_greedy(tiny_llama):
    lm = tiny_llama
    config = GenerationConfig(max_new_tokens=10)
    ours = generate(lm, [PROMPTS[1]], config)[0]
    ids = lm.tokenizer(lm.chat(PROMPTS[1]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    ref = lm.model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=lm.stop_token_ids,
                            pad_token_id=lm.tokenizer.pad_token_id)
    assert ours.token_ids == ref[0, ids.shape[1]:].tolist()[:len(ours.token_ids)]


def test_stop_strings_and_early_stop(tiny_llama):
    lm = tiny_llama
    full = generate(lm, ["Hi"], GenerationConfig(max_new_tokens=16))[0]
    assert full.finish_reason in ("length", "stop")
    if len(full.text) > 3:
        stop = full.text[2:4]
        cut = generate(lm, ["Hi"], GenerationConfig(max_new_tokens=16, stop_strings=(stop,)))[0]
        assert cut.finish_reason == "stop_string" and stop not in cut.text and full.text.startswith(cut.text)
    early = generate(lm, ["Hi", "Hello"], GenerationConfig(max_new_tokens=16),
                     should_stop=lambda row, text: row == 0 and len(text) > 0)
    assert early[0].finish_reason == "early" and early[0].n_new_tokens == 1


def test_sampling_is_seeded_per_row(tiny_llama):
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    a = generate(tiny_llama, ["Hi", "Hello"], config)
    b = generate(tiny_llama, ["Hi", "Hello"], config)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_hooks_see_token_roles(tiny_llama):
    seen = []

    def hook(module, inputs, output):
        info = forward_info()
        seen.append((info.prefill, info.roles.clone(), info.rows.tolist()))

    with forward_hooks([(hook_point(tiny_llama.model, 1).module, hook)]):
        generate(tiny_llama, ["Hi", "Write a poem"], GenerationConfig(max_new_tokens=3, batch_size=2))
    prefill, roles, rows = seen[0]
    assert prefill and sorted(rows) == [0, 1]
    assert (roles == TEMPLATE).any() and (roles == CONTENT).any()
    assert all(not p and (r == GENERATED).all() for p, r, _ in seen[1:])


def test_prompt_too_long_is_a_clear_error(tiny_llama):
    with pytest.raises(SaesteerError, match="context"):
        generate(tiny_llama, ["word " * 600], GenerationConfig(max_new_tokens=4))
    with pytest.raises(SaesteerError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_without_kv_cache_gives_the_same_tokens(tiny_llama):
    cached = generate(tiny_llama, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=4))
    uncached = generate(tiny_llama, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=4, use_cache=False))
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached]


def test_a_conversations_earlier_turns_are_history_and_its_last_message_is_content(tiny_llama):
    from saesteer.generate import HISTORY
    from saesteer.steer.conditions import content_mask

    lm = tiny_llama
    conversation = PROMPTS[3]
    seen = []

    def record(_module, _inputs, _output):
        info = forward_info()
        if info.prefill:
            seen.append(info.roles.clone())

    with forward_hooks([(hook_point(lm.model, "0").module, record)]):
        generate(lm, [conversation, "Hi"], GenerationConfig(max_new_tokens=2, batch_size=2))
    roles = seen[0]
    ids = lm.tokenizer(lm.chat(conversation), add_special_tokens=False)["input_ids"]
    row = roles[0, -len(ids):].tolist()
    first, last = row.index(HISTORY), len(row) - 1 - row[::-1].index(HISTORY)
    assert set(row[first:last + 1]) == {HISTORY} and row[:first] == [TEMPLATE] * first
    assert lm.tokenizer.decode([t for t, r in zip(ids, row) if r == CONTENT]).strip() == "more please"
    assert HISTORY not in roles[1].tolist()  # a single message has no history
    assert roles[1].tolist().count(CONTENT) > 0

    from saesteer.generate import ForwardInfo, forward_context

    info = ForwardInfo(roles=roles, rows=torch.arange(2), prefill=True)
    with forward_context(info):
        whole = content_mask(2, roles.shape[1], roles.device)
        last_turn = content_mask(2, roles.shape[1], roles.device, "last_turn")
    assert whole[0].sum() > last_turn[0].sum() > 0
    assert torch.equal(whole[1], last_turn[1])


def test_on_done_hears_each_prompt_as_its_row_leaves_the_batch(tiny_llama):
    heard = []
    config = GenerationConfig(max_new_tokens=8, batch_size=4)
    gens = generate(tiny_llama, PROMPTS, config, should_stop=lambda row, text: row == 2 and len(text) > 0,
                    on_done=lambda row, gen: heard.append((row, gen)))
    assert sorted(row for row, _ in heard) == list(range(len(PROMPTS)))   # once per prompt
    assert all(gen is gens[row] for row, gen in heard)
    # Row 2 stopped after one token, so it was reported while longer rows were still generating.
    order = [row for row, _ in heard]
    assert gens[2].finish_reason == "early" and any(g.n_new_tokens > 1 for g in gens)
    assert all(order.index(2) < order.index(r) for r, g in enumerate(gens) if g.n_new_tokens > 1)
    assert gens == generate(tiny_llama, PROMPTS, config, should_stop=lambda row, text: row == 2 and len(text) > 0)


def test_the_cli_answers_as_many_rows_together_as_the_library():
    """The CLI keeps torch out of its imports, so it spells EVAL_BATCH out; this keeps them equal."""
    import inspect

    from saesteer.cli.attacks import attacks
    from saesteer.cli.evaluate import refusal
    from saesteer.cli.search import search
    from saesteer.generate import EVAL_BATCH

    for command in (refusal, attacks, search):
        assert inspect.signature(command).parameters["batch_size"].default == EVAL_BATCH


def test_length_batches_keep_rows_and_padded_tokens_under_their_limits():
    from saesteer.generate import length_batches

    lengths = [50, 700, 60, 40, 650, 300, 55, 45]
    batches = length_batches(lengths, max_rows=3, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[40, 45, 50], [55, 60, 300], [650], [700]]
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000)
    assert length_batches([5000], 4, 100) == [[0]]      # a prompt longer than the budget still gets a batch
    assert length_batches([], 4, 100) == []
