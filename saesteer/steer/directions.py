"""Dense baselines in the same engine: the difference-of-means refusal direction (Arditi et al.),
contrastive activation addition (CAA) from refusal vs compliance responses, and linear probes.

All three read mean residuals over chosen token positions of chat-formatted inputs:
`last` (the final prompt token, where the model decides how to answer), `content` (the
user's text, for probes and conditions) or `response` (the assistant reply, for CAA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saesteer.data.replies import COMPLIANCE_REPLIES, REFUSAL_REPLIES
from saesteer.errors import SaesteerError
from saesteer.files import atomic_path
from saesteer.generate import CONTENT, ForwardInfo, forward_context, prompt_roles
from saesteer.hooks import base_model, capture, hook_point, run_until_stopped
from saesteer.models import ChatModel, Conversation, PromptLike, to_conversation

Select = Literal["last", "content", "response"]

def _encode(lm: ChatModel, item: PromptLike, select: Select) -> tuple[list[int], list[bool]]:
    """Token ids of a chat input and the mask of positions to average."""
    tok = lm.tokenizer
    if select == "response":
        conv = to_conversation(item)
        if conv[-1]["role"] != "assistant":
            raise SaesteerError("response positions need conversations that end with an assistant message")
        prefix = tok(lm.chat(conv[:-1], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        full = tok(lm.chat(conv, add_generation_prompt=False), add_special_tokens=False)["input_ids"]
        reply = tok(conv[-1]["content"], add_special_tokens=False)["input_ids"]
        if full[:len(prefix)] != prefix:
            raise SaesteerError("the chat template does not extend the prompt when a reply is added")
        end = min(len(full), len(prefix) + len(reply))
        return full, [len(prefix) <= i < end for i in range(len(full))]
    ids = tok(lm.chat(item, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    if select == "last":
        return ids, [i == len(ids) - 1 for i in range(len(ids))]
    roles = prompt_roles(lm, len(ids), chat=True)
    return ids, [r == CONTENT for r in roles]


def left_padded(chunk: Sequence[tuple[list[int], list[bool]]], pad_id: int | None,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of `_encode` outputs, left-padded: token ids, attention mask, the selected
    positions and position ids (each [batch, width], on `device`)."""
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    attn = torch.zeros_like(ids)
    sel = torch.zeros((len(chunk), width), dtype=torch.bool)
    for i, (tokens, mask) in enumerate(chunk):
        ids[i, width - len(tokens):] = torch.tensor(tokens)
        attn[i, width - len(tokens):] = 1
        sel[i, width - len(tokens):] = torch.tensor(mask)
    ids, attn, sel = ids.to(device), attn.to(device), sel.to(device)
    return ids, attn, sel, (attn.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def mean_residuals(lm: ChatModel, items: Sequence[PromptLike], layers: Sequence[int | str], *,
                   select: Select = "last", batch_size: int = 8, progress: bool | str = False,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Per item, the mean residual over the selected positions: {layer: [n_items, d_model]}.
    With `transform` (an SAE's `encode`), each token's residual is transformed before averaging."""
    return mean_residuals_of_ids(lm, [_encode(lm, it, select) for it in items], layers, batch_size=batch_size,
                                 progress=progress, transform=transform)


@torch.inference_mode()
def mean_residuals_of_ids(lm: ChatModel, encoded: Sequence[tuple[list[int], list[bool]]], layers: Sequence[int | str],
                          *, batch_size: int = 8, progress: bool | str = False,
                          transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """`mean_residuals` of token ids given with the mask of positions to average (e.g. a
    generated answer's own tokens, read again without re-tokenising its text)."""
    points = [hook_point(lm.model, w) for w in layers]
    model = base_model(lm.model)
    out: dict[int, list[torch.Tensor]] = {p.layer: [] for p in points}
    bar = tqdm(total=len(encoded), disable=not progress, desc=progress if isinstance(progress, str) else "residuals",
               leave=False)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, attn, sel, positions = left_padded(chunk, lm.tokenizer.pad_token_id, lm.device)
        if not sel.any(dim=1).all():
            raise SaesteerError("an input has no positions to read (empty prompt or reply?)")
        info = ForwardInfo(roles=attn * CONTENT, rows=torch.arange(len(chunk), device=lm.device), prefill=True)
        with forward_context(info), capture(model, [p.layer for p in points]) as acts:
            run_until_stopped(lambda: model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False))
        w = sel.float()
        for p in points:
            h = acts[p.layer].float() if transform is None else transform(acts[p.layer]).float()
            out[p.layer].append(((h * w[..., None]).sum(1) / w.sum(1, keepdim=True)).cpu())
        bar.update(len(chunk))
    bar.close()
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def diff_of_means(lm: ChatModel, harmful: Sequence[PromptLike], harmless: Sequence[PromptLike],
                  layers: Sequence[int | str], *, select: Select = "last", **kw) -> dict[int, torch.Tensor]:
    """Arditi et al.'s refusal direction: mean residual on harmful minus harmless prompts."""
    a = mean_residuals(lm, harmful, layers, select=select, **kw)
    b = mean_residuals(lm, harmless, layers, select=select, **kw)
    return {layer: a[layer].mean(0) - b[layer].mean(0) for layer in a}


def contrast_pairs(prompts: Sequence[str], refusals: Sequence[str] = REFUSAL_REPLIES,
                   compliances: Sequence[str] = COMPLIANCE_REPLIES) -> tuple[list[Conversation], list[Conversation]]:
    """Every prompt answered by every refusal and every compliance reply."""
    pos = [to_conversation(p) + [{"role": "assistant", "content": r}] for p in prompts for r in refusals]
    neg = [to_conversation(p) + [{"role": "assistant", "content": c}] for p in prompts for c in compliances]
    return pos, neg


def caa_direction(lm: ChatModel, prompts: Sequence[str], layers: Sequence[int | str], *,
                  refusals: Sequence[str] = REFUSAL_REPLIES, compliances: Sequence[str] = COMPLIANCE_REPLIES,
                  **kw) -> dict[int, torch.Tensor]:
    """Contrastive activation addition: mean response residual of refusals minus compliances."""
    pos, neg = contrast_pairs(prompts, refusals, compliances)
    a = mean_residuals(lm, pos, layers, select="response", **kw)
    b = mean_residuals(lm, neg, layers, select="response", **kw)
    return {layer: a[layer].mean(0) - b[layer].mean(0) for layer in a}


def train_probe(positive: torch.Tensor, negative: torch.Tensor, *, c: float = 1.0) -> tuple[torch.Tensor, float]:
    """Logistic regression (harmful = 1) on residuals, returned as raw-space (weight, bias)."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).numpy()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    clf = LogisticRegression(C=c, max_iter=2000).fit(((x - mean) / std).numpy(), y)
    w = torch.tensor(clf.coef_[0]) / std
    b = float(clf.intercept_[0]) - float((w * mean).sum())
    return w.float(), b


def save_vectors(path: str | Path, vectors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().float().contiguous() for k, v in vectors.items()}, str(tmp),
                  metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path
