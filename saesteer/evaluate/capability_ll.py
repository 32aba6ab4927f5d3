"""Batched log-likelihood of continuations given contexts: log p(continuation | context).

Tokenised as lm-evaluation-harness does (trailing spaces of the context move to the
continuation; the continuation's tokens are those of `context + continuation` after the
context's), so scores match the harness. Three savings make it affordable on a CPU:

* requests with the same model input (the four " A"/" B"/" C"/" D" answers of one MMLU
  question) share one forward;
* requests of a group (one few-shot prompt) share the key/value cache of their common token
  prefix, computed once; the rest of each row is run on top of it;
* only the positions that score continuation tokens reach the LM head.

Steering hooks see `ForwardInfo` roles: context tokens are CONTENT, continuation tokens
GENERATED (the answer plays the part of a generated reply), padding PAD. Prefix sharing is
off under conditional steering, whose per-row decision must read the whole context.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.generate import CONTENT, GENERATED, PAD, ForwardInfo, cache_kwarg, forward_context
from saesteer.models import ChatModel

MIN_SHARED_PREFIX = 16
"""Tokens a group's common prefix needs before it is worth a cached forward of its own."""


@dataclass
class LogLikelihood:
    logprob: float
    """Sum of the continuation tokens' log-probabilities."""
    greedy: bool
    """Whether greedy decoding would produce the continuation."""
    n_tokens: int
    row: int
    """Row id the forward ran under (`ForwardInfo.rows`), for reading conditional decisions."""


def encode_pair(lm: ChatModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), split as lm-eval splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    tok = lm.tokenizer
    whole = tok(context + continuation, add_special_tokens=True)["input_ids"]
    ctx = tok(context, add_special_tokens=True)["input_ids"]
    cont = whole[len(ctx):]
    if not ctx:  # nothing to condition on: start from the end-of-text token, as lm-eval does
        ctx = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    if not cont:
        raise SaesteerError(f"continuation {continuation!r} encodes to no tokens")
    return ctx, cont


@dataclass
class _Input:
    """One distinct model input and the requests scored on it."""

    ids: list[int]
    n_context: int
    """How many of `ids` are context (the rest are continuation tokens but the last)."""
    group: Hashable
    requests: list[tuple[int, list[int]]]
    """(request index, continuation tokens); the continuation ends where `ids` ends."""


@torch.inference_mode()
def loglikelihoods(lm: ChatModel, requests: Sequence[tuple[str, str]], *, batch_size: int = 8,
                   groups: Sequence[Hashable] | None = None, share_prefix: bool = True,
                   progress: bool | str = False,
                   on_done: Callable[[int], None] | None = None) -> list[LogLikelihood]:
    """log p(continuation | context) for each (context, continuation), in the order given.

    `groups` (one key per request, e.g. the MMLU subject) says which requests share a few-shot
    prefix worth caching; without it all requests form one group. Inputs longer than the
    model's context are cut from the left, as lm-eval does. `on_done(i)` hears of request i as
    soon as it is scored (for progress per item rather than per call).
    """
    if batch_size < 1:
        raise SaesteerError("batch_size must be at least 1")
    if groups is not None and len(groups) != len(requests):
        raise SaesteerError(f"{len(requests)} requests but {len(groups)} group keys")
    limit = lm.context_length
    inputs: dict[tuple, _Input] = {}
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = encode_pair(lm, context, continuation)
        ids = (ctx + cont)[:-1]
        n_context = len(ctx)
        if len(ids) > limit:
            cut = len(ids) - limit
            ids, n_context = ids[cut:], max(0, n_context - cut)
        group = groups[i] if groups is not None else None
        key = (group, n_context, tuple(ids))
        if key not in inputs:
            inputs[key] = _Input(ids, n_context, group, [])
        inputs[key].requests.append((i, cont))
    results: list[LogLikelihood | None] = [None] * len(requests)
    by_group: dict[Hashable, list[_Input]] = {}
    for inp in inputs.values():
        by_group.setdefault(inp.group, []).append(inp)
    bar = tqdm(total=len(requests), desc=progress if isinstance(progress, str) else "loglikelihood",
               unit="request", disable=not progress, leave=False)
    for members in by_group.values():
        prefix_len = _shared_prefix(members) if share_prefix else 0
        cache = _prefix_cache(lm, members[0].ids[:prefix_len]) if prefix_len else None
        members.sort(key=lambda m: -len(m.ids))
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            _score_batch(lm, batch, prefix_len, cache, results)
            bar.update(sum(len(m.requests) for m in batch))
            if on_done is not None:
                for m in batch:
                    for index, _ in m.requests:
                        on_done(index)
    bar.close()
    return [r for r in results if r is not None]


def _shared_prefix(members: list[_Input]) -> int:
    """Length of the token prefix common to all inputs. It stops before each row's last context
    token, whose logits score the continuation's first token."""
    first = members[0].ids
    n = min(m.n_context for m in members) - 1
    for m in members[1:]:
        k = 0
        while k < n and m.ids[k] == first[k]:
            k += 1
        n = k
        if n < MIN_SHARED_PREFIX:
            return 0
    # A group of one input gains nothing from a separate prefix forward.
    return n if n >= MIN_SHARED_PREFIX and len(members) > 1 else 0


def _prefix_cache(lm: ChatModel, prefix: list[int]):
    from transformers import DynamicCache

    device = lm.device
    cache = DynamicCache(config=lm.model.config)
    ids = torch.tensor([prefix], device=device)
    info = ForwardInfo(roles=torch.full_like(ids, CONTENT), rows=torch.tensor([-1], device=device), prefill=True)
    with forward_context(info):
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **cache_kwarg(lm.model, cache),
                 logits_to_keep=1)
    return cache


def _score_batch(lm: ChatModel, batch: list[_Input], prefix_len: int, cache, results: list) -> None:
    """One forward over the rows of `batch` (left-padded after the shared prefix)."""
    device = lm.device
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows = [m.ids[prefix_len:] for m in batch]
    width = max(len(r) for r in rows)
    n = len(batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    roles = torch.full((n, width), PAD, dtype=torch.long)
    attention = torch.zeros((n, prefix_len + width), dtype=torch.long)
    attention[:, :prefix_len] = 1
    for i, (m, r) in enumerate(zip(batch, rows)):
        ids[i, width - len(r):] = torch.tensor(r)
        attention[i, prefix_len + width - len(r):] = 1
        n_ctx = max(0, m.n_context - prefix_len)
        roles[i, width - len(r):] = torch.tensor([CONTENT] * n_ctx + [GENERATED] * (len(r) - n_ctx))
    ids, attention, roles = ids.to(device), attention.to(device), roles.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
    keep = max(len(cont) for m in batch for _, cont in m.requests)
    past = None
    if cache is not None:
        past = copy.deepcopy(cache)
        if n > 1:
            past.batch_repeat_interleave(n)
    row_ids = [m.requests[0][0] for m in batch]
    info = ForwardInfo(roles=roles, rows=torch.tensor(row_ids, device=device), prefill=True)
    with forward_context(info):
        out = lm.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                       **cache_kwarg(lm.model, past), use_cache=past is not None, logits_to_keep=keep)
    logprobs = torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)
    for i, m in enumerate(batch):
        for index, cont in m.requests:
            k = len(cont)
            lp = logprobs[i, keep - k:]
            target = torch.tensor(cont, device=device)
            total = lp.gather(-1, target[:, None])[:, 0].sum().item()
            greedy = bool((lp.argmax(-1) == target).all())
            results[index] = LogLikelihood(total, greedy, k, row_ids[i])
