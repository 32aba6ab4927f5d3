"""Batched generation with left padding, a KV cache and per-row stopping.

Our own loop rather than `model.generate`, for three reasons: rows that finish leave the
batch (the cache is compacted), an evaluator can stop a row early once its answer is
decided, and steering hooks can see which tokens are prompt and which are generated through
`forward_info()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.models import ChatModel, PromptLike

EVAL_BATCH = 32
"""Rows answered together by the evaluations, the search and discovery. Decoding a 135M model on
2 CPU cores is bound by reading the weights, so 32 rows answer about 1.2x faster than 16
(docs/RESULTS.md, "Core"); a GPU takes more."""


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, shortest first: at most `max_rows` rows and
    at most `max_tokens` padded tokens (rows x longest) per batch, but always at least one row.
    A forward over prompts (no decoding) costs what its padded batch holds, so a few long prompts
    must not pad many short ones, nor many long ones share one batch's attention scores."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_rows and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches

# Token roles seen by steering hooks. HISTORY: the earlier turns of a conversation (their text and
# scaffolding); CONTENT is then the last turn's text.
PAD, TEMPLATE, CONTENT, GENERATED, HISTORY = 0, 1, 2, 3, 4


@dataclass
class ForwardInfo:
    """What the current forward pass holds, for hooks that act per token or per row."""

    roles: torch.Tensor
    """[batch, seq] int: PAD, TEMPLATE (chat scaffolding), CONTENT (prompt text, the last turn's
    in a conversation), HISTORY (a conversation's earlier turns) or GENERATED."""
    rows: torch.Tensor
    """[batch] index of each row in the caller's list of prompts (stable while rows finish)."""
    prefill: bool
    """True when the pass reads the prompt (the first forward of a generation)."""


_FORWARD_INFO: contextvars.ContextVar[ForwardInfo | None] = contextvars.ContextVar(
    "saesteer_forward_info", default=None)


def forward_info() -> ForwardInfo | None:
    """The `ForwardInfo` of the forward pass now running, or None outside `generate`."""
    return _FORWARD_INFO.get()


@contextlib.contextmanager
def forward_context(info: ForwardInfo) -> Iterator[None]:
    token = _FORWARD_INFO.set(info)
    try:
        yield
    finally:
        _FORWARD_INFO.reset(token)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    """Upper bound on generated tokens per row."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    stop_strings: tuple[str, ...] = ()
    """A row ends when its text contains one of these (the text is cut before it)."""
    batch_size: int = 8
    seed: int = 0
    """Sampling seed; each row gets its own generator, so a row's sample does not depend on its batch."""
    system: str | None = None
    """System prompt for chat prompts (None keeps the template's default)."""
    use_cache: bool = True
    """False recomputes the whole sequence every step (slow; for checking cached results)."""
    ignore_eos: bool = False
    """Keep generating past end-of-turn tokens (fixed-length runs for benchmarks)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SaesteerError("max_new_tokens must be at least 1")
        if self.batch_size < 1:
            raise SaesteerError("batch_size must be at least 1")
        if not 0 <= self.temperature < float("inf") or not 0 < self.top_p <= 1:  # NaN fails both
            raise SaesteerError(f"temperature must be a finite number >= 0 and top_p in (0, 1] "
                                f"(got {self.temperature}, {self.top_p})")


@dataclass
class Generation:
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str
    """stop (end of turn), stop_string, length, or early (the caller's `should_stop`)."""
    token_ids: list[int] = field(default_factory=list)


ShouldStop = Callable[[int, str], bool]
"""`should_stop(row, text_so_far)`: end a row early (e.g. once a judge is certain)."""
OnToken = Callable[[int, int, str], None]
"""`on_token(row, token_id, text_so_far)`: called after each generated token is appended (streaming)."""
OnFinish = Callable[[int, str], None]
"""`on_finish(row, finish_reason)`: called as a row leaves the batch (before the batch ends)."""
OnDone = Callable[[int, "Generation"], None]
"""`on_done(row, generation)`: a prompt's finished answer, as its row leaves the batch (progress per
prompt, not per batch)."""


def chat_template_spans(lm: ChatModel) -> tuple[int, int]:
    """(prefix, suffix) token counts of the chat scaffolding around a single user message."""
    cached = lm.info.get("chat_spans")
    if cached:
        return cached
    a = encode_prompt(lm, "alpha beta", chat=True, system=None)
    b = encode_prompt(lm, "gamma delta epsilon", chat=True, system=None)
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    lm.info["chat_spans"] = (prefix, suffix)
    return prefix, suffix


def encode_prompt(lm: ChatModel, prompt: PromptLike, *, chat: bool = True,
                  system: str | None = None) -> list[int]:
    if chat:
        text = lm.chat(prompt, system=system)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise SaesteerError("raw (non-chat) prompts must be plain strings")
    return lm.tokenizer(prompt, add_special_tokens=True)["input_ids"]


def prompt_roles(lm: ChatModel, length: int, *, chat: bool, last_turn: int | None = None) -> list[int]:
    """Roles of a prompt's tokens; `last_turn` (tokens of the final message's text, from
    `last_turn_tokens`) splits a conversation's content into HISTORY and CONTENT."""
    if not chat:
        return [CONTENT] * length
    prefix, suffix = chat_template_spans(lm)
    prefix = min(prefix, length)
    suffix = min(suffix, length - prefix)
    content = length - prefix - suffix
    history = content - last_turn if last_turn is not None and 0 < last_turn < content else 0
    return [TEMPLATE] * prefix + [HISTORY] * history + [CONTENT] * (content - history) + [TEMPLATE] * suffix


def last_turn_tokens(lm: ChatModel, prompt: PromptLike, ids: list[int], system: str | None = None) -> int | None:
    """Tokens of the final user message's text in an encoded multi-message prompt (None for a
    single message): the length difference to the same conversation with that text emptied."""
    if isinstance(prompt, str) or len(prompt) < 2 or prompt[-1].get("role") != "user":
        return None
    emptied = [*prompt[:-1], {**prompt[-1], "content": ""}]
    return len(ids) - len(encode_prompt(lm, emptied, chat=True, system=system))


@torch.inference_mode()
@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache as a forward keyword: `cache` in transformers 5.x, `past_key_values` before."""
    return {_cache_argument(type(model)): cache}


def generate(lm: ChatModel, prompts: Sequence[PromptLike], config: GenerationConfig | None = None,
             *, chat: bool = True, should_stop: ShouldStop | None = None,
             on_token: OnToken | None = None, on_finish: OnFinish | None = None,
             on_done: OnDone | None = None, progress: bool | str = False) -> list[Generation]:
    """Generate one answer per prompt, in the order given.

    Prompts are chat prompts (a string or a list of messages) rendered with the model's chat
    template, or raw text with `chat=False`. Greedy output for a prompt does not depend on
    the other prompts in its batch.
    """
    config = config or GenerationConfig()
    encoded = [encode_prompt(lm, p, chat=chat, system=config.system) for p in prompts]
    last_turns = [last_turn_tokens(lm, p, ids, config.system) if chat else None for p, ids in zip(prompts, encoded)]
    limit = lm.context_length
    for i, ids in enumerate(encoded):
        if not ids:
            raise SaesteerError(f"prompt {i} is empty")
        if len(ids) + config.max_new_tokens > limit:
            raise SaesteerError(
                f"prompt {i} has {len(ids)} tokens and {config.max_new_tokens} new tokens do not fit "
                f"the model's {limit}-token context; shorten the prompt or lower --max-new-tokens")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc=progress if isinstance(progress, str) else "generate",
               unit="prompt", disable=not progress, leave=False)

    def done(row: int, gen: Generation) -> None:
        bar.update(1)
        if on_done is not None:
            on_done(row, gen)

    for start in range(0, len(order), config.batch_size):
        rows = order[start:start + config.batch_size]
        batch = [encoded[r] for r in rows]
        roles = [prompt_roles(lm, len(encoded[r]), chat=chat, last_turn=last_turns[r]) for r in rows]
        gens = _generate_batch(lm, batch, roles, rows, config, should_stop, on_token, on_finish, done)
        for row, gen in zip(rows, gens):
            results[row] = gen
    bar.close()
    return [r for r in results if r is not None]


def _sample(logits: torch.Tensor, rows: list[int], config: GenerationConfig,
            generators: dict[int, torch.Generator]) -> torch.Tensor:
    logits = logits.float()
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1).cpu()
    out = []
    for i, row in enumerate(rows):
        # torch takes 64-bit seeds; a negative one means its two's complement, so `% 2**64` changes
        # no seed that worked and lets any integer seed work
        g = generators.setdefault(row, torch.Generator().manual_seed((config.seed * 1_000_003 + row) % 2**64))
        out.append(torch.multinomial(probs[i], 1, generator=g))
    return torch.cat(out).to(logits.device)


def _generate_batch(lm: ChatModel, batch: list[list[int]], roles: list[list[int]], rows: list[int],
                    config: GenerationConfig, should_stop: ShouldStop | None,
                    on_token: OnToken | None = None, on_finish: OnFinish | None = None,
                    on_done: OnDone | None = None) -> list[Generation]:
    from transformers import DynamicCache

    device = lm.device
    pad_id = lm.tokenizer.pad_token_id
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    role_t = torch.full((len(batch), width), PAD, dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention[i, width - len(ids):] = 1
        role_t[i, width - len(ids):] = torch.tensor(roles[i])
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    stop_ids = torch.tensor([] if config.ignore_eos else lm.stop_token_ids, dtype=torch.long, device=device)
    cache = DynamicCache(config=lm.model.config) if config.use_cache else None
    generators: dict[int, torch.Generator] = {}

    live = list(range(len(batch)))        # indices into `batch` still generating
    new_tokens: list[list[int]] = [[] for _ in batch]
    texts = [""] * len(batch)
    finished: dict[int, str] = {}
    results: dict[int, Generation] = {}

    def finish(i: int, reason: str) -> None:
        finished[i] = reason
        if on_finish is not None:
            on_finish(rows[i], reason)
        results[i] = _result(lm, batch[i], new_tokens[i], reason, config.stop_strings)
        if on_done is not None:
            on_done(rows[i], results[i])

    info = ForwardInfo(roles=role_t.to(device), rows=torch.tensor(rows, device=device), prefill=True)
    with forward_context(info):
        out = lm.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                       **cache_kwarg(lm.model, cache if config.use_cache else None),
                       use_cache=config.use_cache, logits_to_keep=1)
    logits = out.logits[:, -1]
    for _step in range(config.max_new_tokens):
        next_ids = _sample(logits, [rows[i] for i in live], config, generators)
        is_stop = torch.isin(next_ids, stop_ids).tolist()
        next_list = next_ids.tolist()
        keep: list[int] = []
        for j, i in enumerate(live):
            if is_stop[j]:
                finish(i, "stop")
                continue
            new_tokens[i].append(next_list[j])
            if config.stop_strings or should_stop or on_token:
                texts[i] = lm.tokenizer.decode(new_tokens[i], skip_special_tokens=True)
            if on_token is not None:
                on_token(rows[i], next_list[j], texts[i])
            hit = next((s for s in config.stop_strings if s in texts[i]), None)
            if hit is not None:
                finish(i, "stop_string")
            elif should_stop is not None and should_stop(rows[i], texts[i]):
                finish(i, "early")
            elif len(new_tokens[i]) >= config.max_new_tokens:
                finish(i, "length")
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            if cache is not None:
                cache.batch_select_indices(index)
            attention = attention[index]
            positions = positions[index]
            next_ids = next_ids[index]
            live = [live[j] for j in keep]
        attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=1)
        positions = positions[:, -1:] + 1
        live_rows = torch.tensor([rows[i] for i in live], device=device)
        if config.use_cache:
            info = ForwardInfo(roles=torch.full((len(live), 1), GENERATED, device=device),
                               rows=live_rows, prefill=False)
            with forward_context(info):
                out = lm.model(input_ids=next_ids[:, None], attention_mask=attention,
                               position_ids=positions, **cache_kwarg(lm.model, cache), use_cache=True)
        else:
            out = _full_forward(lm, input_ids, role_t.to(device), live,
                                new_tokens, attention, live_rows, pad_id)
        logits = out.logits[:, -1]
    for i in range(len(batch)):
        if i not in results:
            finish(i, "length")
    return [results[i] for i in range(len(batch))]


def _result(lm: ChatModel, prompt_ids: list[int], new_tokens: list[int], reason: str,
            stop_strings: tuple[str, ...]) -> Generation:
    text = lm.tokenizer.decode(new_tokens, skip_special_tokens=True)
    if reason == "stop_string":
        text = text[:min(text.find(s) for s in stop_strings if s in text)]
    return Generation(text=text, n_prompt_tokens=len(prompt_ids), n_new_tokens=len(new_tokens),
                      finish_reason=reason, token_ids=new_tokens)


def generate_one(lm: ChatModel, prompt: PromptLike, **config: Any) -> str:
    """Convenience: the answer to one chat prompt."""
    return generate(lm, [prompt], GenerationConfig(**config))[0].text


def _full_forward(lm: ChatModel, prompt_ids: torch.Tensor, prompt_roles: torch.Tensor, live: list[int],
                  new_tokens: list[list[int]], attention: torch.Tensor, rows: torch.Tensor,
                  pad_id: int) -> Any:
    """Forward over prompt + everything generated so far, without a cache (the slow reference)."""
    device = prompt_ids.device
    n_new = len(new_tokens[live[0]])
    gen = torch.tensor([new_tokens[i] for i in live], device=device).reshape(len(live), n_new)
    ids = torch.cat([prompt_ids[live], gen], dim=1)
    roles = torch.cat([prompt_roles[live], torch.full_like(gen, GENERATED)], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with forward_context(ForwardInfo(roles=roles, rows=rows, prefill=True)):
        return lm.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
