"""How far steering moves the model on harmless answers: the mean KL divergence from the unsteered
model's next-token distribution to the steered one's, over the unsteered model's own answers to
safe prompts (teacher-forced).

A capability measure that is not at chance on a small model: multiple-choice accuracy of a 135M
model sits near the floor, but its next-token distribution on its own fluent answers is sharp,
and any steering that leaks into harmless prompts shows up here. A gate that does not fire on a
prompt leaves that prompt's KL at exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saesteer.data import load_records
from saesteer.errors import SaesteerError, at_least
from saesteer.generate import GENERATED, ForwardInfo, GenerationConfig, encode_prompt, forward_context, generate, prompt_roles
from saesteer.models import ChatModel
from saesteer.steer import Steering, SteeringSpec


@dataclass
class KLConfig:
    datasets: str = "bundled:harmless@test"
    limit: int | None = 24
    max_new_tokens: int = 32
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(1, limit=self.limit, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)


def _logprobs(lm: ChatModel, rows: list[tuple[list[int], list[int], list[int]]]) -> list[torch.Tensor]:
    """Per row, log-probabilities [n_answer, vocab] of the positions that predict each answer token."""
    width = max(len(p) + len(a) for p, _, a in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    roles = torch.zeros_like(ids)
    attn = torch.zeros_like(ids)
    for i, (p, r, a) in enumerate(rows):
        seq = p + a
        ids[i, width - len(seq):] = torch.tensor(seq)
        roles[i, width - len(seq):] = torch.tensor(r + [GENERATED] * len(a))
        attn[i, width - len(seq):] = 1
    ids, roles, attn = ids.to(lm.device), roles.to(lm.device), attn.to(lm.device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    info = ForwardInfo(roles=roles, rows=torch.arange(len(rows), device=lm.device), prefill=True)
    with torch.inference_mode(), forward_context(info):
        logits = lm.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False).logits
    out = []
    for i, (_, _, a) in enumerate(rows):
        # Logits at position t predict token t+1: the answer's tokens are the last len(a) ones.
        out.append(torch.log_softmax(logits[i, width - len(a) - 1:width - 1].float(), dim=-1).cpu())
    return out


def harmless_kl(lm: ChatModel, spec: SteeringSpec | str | None, config: KLConfig | None = None,
                *, progress: bool = True) -> dict:
    """Mean KL(unsteered ‖ steered) per answer token, averaged over prompts, with a 95% interval."""
    config = config or KLConfig()
    records = [r for r in load_records(config.datasets, limit=config.limit, seed=config.seed) if r.label != "unsafe"]
    if not records:
        raise SaesteerError(f"no safe prompts in {config.datasets} to measure KL on")
    if spec is None:
        return {"mean_kl": 0.0, "ci95": [0.0, 0.0], "n": len(records), "datasets": config.datasets}
    steering = Steering(lm, spec)
    gens = generate(lm, [r.prompt for r in records],
                    GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size))
    rows = []
    for r, g in zip(records, gens):
        p = encode_prompt(lm, r.prompt)
        if g.token_ids:
            rows.append((p, prompt_roles(lm, len(p), chat=True), list(g.token_ids)))
    per_prompt: list[float] = []
    bar = tqdm(total=len(rows), unit="prompt", desc="KL on harmless answers", disable=not progress, leave=False)
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start:start + config.batch_size]
        base = _logprobs(lm, chunk)
        with steering.active():
            steered = _logprobs(lm, chunk)
        for a, b in zip(base, steered):
            per_prompt.append(float((a.exp() * (a - b)).sum(-1).mean()))
        bar.update(len(chunk))
    bar.close()
    if not per_prompt:
        raise SaesteerError("the unsteered model gave only empty answers; no tokens to measure KL on")
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / max(1, n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"mean_kl": mean, "ci95": [max(0.0, mean - half), mean + half], "n": n, "datasets": config.datasets,
            "tokens": config.max_new_tokens}
