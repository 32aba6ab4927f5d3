"""Rank latents by what they do to the refusal reply, not only by where they fire.

Activation statistics find latents that fire on refusals; they do not say which of them make
the model refuse. Two cheaper proxies for the causal check:

- **Attribution** (attribution patching, Nanda 2023; Marks et al. 2024): splice the SAE into the
  residual stream (codes decoded plus the SAE's error term, so the forward pass is unchanged),
  teacher-force a reply, and take each latent's activation times the gradient of
  ±log p(reply | prompt) with respect to it, summed over the conversation's tokens: + for a
  refusal reply, − for a compliance. A positive score means the latent, where it fires, pushes the
  model toward refusing. The plain gradient, averaged over tokens, estimates what adding the
  latent's direction everywhere would do, also for latents that rarely fire.
- **Decoder alignment**: the cosine of each latent's decoder row with the dense refusal
  directions (CAA on replies, DiffMean on prompts) that are known to steer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.hooks import HookPoint, forward_hooks, output_tensor, replace_output
from saesteer.models import ChatModel
from saesteer.steer.directions import _encode, left_padded

RANKINGS = ("activation", "attribution", "gradient", "caa_alignment", "diffmean_alignment")
"""Orders discovery can draw causal-check candidates from (`DiscoverConfig.rank_by`)."""


def check_rankings(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in RANKINGS]
    if unknown or not names:
        raise SaesteerError(f"unknown latent ranking {', '.join(unknown) or '(none given)'}; "
                            f"use one or more of {', '.join(RANKINGS)}")


def reply_attribution(lm: ChatModel, sae: Any, point: HookPoint, conversations: Sequence[list[dict]],
                      signs: Sequence[float], *, batch_size: int = 4,
                      progress: bool | str = False) -> dict[str, torch.Tensor]:
    """Per latent [d_sae], averaged over conversations (each ending with an assistant reply):
    `attribution` = Σ_t z_t · ∂m/∂z_t and `gradient` = mean_t ∂m/∂z_t, where
    m = sign · log p(reply | everything before it) and t runs over every token of the conversation."""
    if len(conversations) != len(signs) or not conversations:
        raise SaesteerError("reply attribution needs one sign per conversation and at least one conversation")
    model = lm.model
    encoded = [_encode(lm, conv, "response") for conv in conversations]
    attribution = torch.zeros(sae.d_sae)
    gradient = torch.zeros(sae.d_sae)
    state: dict[str, torch.Tensor] = {}

    def splice(_module: Any, _inputs: Any, output: Any) -> Any:
        h = output_tensor(output)
        with torch.no_grad():
            z0 = sae.encode(h.to(sae.dtype))
            error = h.to(sae.dtype) - sae.decode(z0)
        z = z0.detach().requires_grad_(True)
        state["z"] = z
        return replace_output(output, (sae.decode(z) + error).to(h.dtype))

    bar = tqdm(total=len(encoded), desc=progress if isinstance(progress, str) else "attribution",
               unit="reply", disable=not progress, leave=False)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, attn, reply, positions = left_padded(chunk, lm.tokenizer.pad_token_id, lm.device)
        sign = torch.tensor(list(signs[start:start + batch_size]), dtype=torch.float32, device=lm.device)
        with torch.enable_grad(), forward_hooks([(point.module, splice)]):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
            per_reply = (logp * reply[:, 1:]).sum(-1)
            (grad,) = torch.autograd.grad((sign * per_reply).sum(), [state["z"]])
        z = state.pop("z").detach()
        valid = attn.bool()[..., None].to(grad.dtype)
        attribution += (z * grad * valid).sum(1).float().sum(0).cpu()
        gradient += ((grad * valid).sum(1) / valid.sum(1)).float().sum(0).cpu()
        bar.update(len(chunk))
    bar.close()
    n = len(encoded)
    return {"attribution": attribution / n, "gradient": gradient / n}


def decoder_alignment(sae: Any, direction: torch.Tensor) -> torch.Tensor:
    """Cosine of every decoder row with `direction`: [d_sae]."""
    w = sae.W_dec.detach().float().cpu()
    d = direction.detach().float().cpu().flatten()
    if d.shape[0] != w.shape[1]:
        raise SaesteerError(f"a direction of width {d.shape[0]} cannot be compared with an SAE of width {w.shape[1]}")
    return (w @ d) / (w.norm(dim=1) * d.norm()).clamp(min=1e-8)


def pick_candidates(orders: dict[str, list[int]], n: int) -> dict[int, str]:
    """Take latents from each order in turn (round robin, best first, no repeats) until `n`:
    {latent: the order that picked it}, in the order they were picked."""
    chosen: dict[int, str] = {}
    cursors = dict.fromkeys(orders, 0)
    while len(chosen) < n and any(cursors[k] < len(v) for k, v in orders.items()):
        for name, order in orders.items():
            while cursors[name] < len(order) and order[cursors[name]] in chosen:
                cursors[name] += 1
            if cursors[name] < len(order) and len(chosen) < n:
                chosen[order[cursors[name]]] = name
                cursors[name] += 1
    return chosen
