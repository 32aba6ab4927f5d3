"""Tiny random models of several architectures, with a small byte-level BPE tokenizer.

No download: the tokenizer is trained in milliseconds on a few sentences and carries a ChatML
chat template, so every test can build a complete `ChatModel` offline.
"""

from __future__ import annotations

import functools

import torch

from saesteer.models import ChatModel

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sorry, but I can't help with that request.",
    "Sure, here is a simple recipe for pancakes with flour, eggs and milk.",
    "How do I kill a Python process? Use the kill command with the process id.",
    "Write a poem about the sea, the waves and the shore at night.",
    "Explain photosynthesis: plants turn light, water and carbon dioxide into sugar.",
    "0123456789 + - * / = ( ) [ ] { } ? ! . , ; : ' \" # @ & % $",
]

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def tiny_config(arch: str, vocab: int, *, layers: int = 4, d: int = 64):
    import transformers as t

    common = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=4 * d, max_position_embeddings=512)
    match arch:
        case "llama":
            return t.LlamaConfig(num_key_value_heads=2, **common)
        case "mistral":
            return t.MistralConfig(num_key_value_heads=2, **common)
        case "qwen2":
            return t.Qwen2Config(num_key_value_heads=2, **common)
        case "gemma2":
            return t.Gemma2Config(num_key_value_heads=2, head_dim=16, **common)
        case "gemma3":
            return t.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, **common)
        case "phi3":
            return t.Phi3Config(num_key_value_heads=2, pad_token_id=0, **common)
        case "gpt2":
            return t.GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=4, n_positions=512)
        case "gpt_neox":
            return t.GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                                   num_attention_heads=4, intermediate_size=4 * d, max_position_embeddings=512)
    raise ValueError(arch)


def tiny_model(arch: str = "llama", *, layers: int = 4, d: int = 64, seed: int = 0) -> ChatModel:
    """A `ChatModel` with random weights (float32, CPU, eval mode)."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok), layers=layers, d=d)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager"
                                             if arch in ("gemma2", "gemma3") else None).eval()
    model.requires_grad_(False)
    # Random tiny models hit the end-of-turn token by chance; make greedy runs long enough to compare.
    model.generation_config.eos_token_id = tok.eos_token_id
    return ChatModel(model=model, tokenizer=tok, name=f"tiny-{arch}", model_id=f"tiny-random/{arch}",
                     revision="random")


def save_tiny_model(folder, arch: str = "llama", **kw) -> str:
    """Write a tiny random model + tokenizer as an HF folder (loadable by `load_model(path)`)."""
    lm = tiny_model(arch, **kw)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)
