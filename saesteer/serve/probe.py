"""Per-token activation of one feature over a generated answer, for the side-by-side page.

The answer is fed back through the model (teacher forcing) with the same steering it was
generated with, and the feature is read at its hook *before* that hook's own edit: what the
model computes there given everything upstream, including steered earlier tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from saesteer.generate import GENERATED, ForwardInfo, encode_prompt, forward_context, prompt_roles
from saesteer.hooks import HookPoint, forward_hooks, hook_point, output_tensor
from saesteer.models import ChatModel, Conversation
from saesteer.serve.registry import InvalidSteering, Registry
from saesteer.steer import FileRef, Steering, SteeringSpec
from saesteer.steer.engine import load_sae_ref
from saesteer.steer.interventions import DirectionIntervention, SAEFeatureIntervention


@dataclass
class Probe:
    point: HookPoint
    scores: Callable[[torch.Tensor], torch.Tensor]
    """[N, d] residuals → [N] activations."""
    info: dict[str, Any] = field(default_factory=dict)


def sae_probe(sae: Any, feature: int, point: HookPoint, name: str | None) -> Probe:
    idx = torch.tensor([feature])

    def scores(x: torch.Tensor) -> torch.Tensor:
        return sae.feature_acts(x.to(sae.W_dec.dtype), idx.to(x.device))[:, 0].float()

    return Probe(point, scores, {"kind": "sae_feature", "sae": name, "feature": feature, "hook": point.name})


def probe_for(registry: Registry, steering: Steering, sae: str | None = None, feature: int | None = None,
              hook: str | int | None = None) -> Probe:
    """The feature to show: the one asked for, else the steering's first SAE feature, else the
    projection on its first steering direction."""
    lm = registry.lm
    if sae is not None:
        entry = registry._sae_named(sae)
        if feature is None or not 0 <= feature < entry.d_sae:
            raise InvalidSteering(f"probe feature must be between 0 and {entry.d_sae - 1} for SAE {sae!r}")
        where = hook if hook is not None else entry.hook
        if where is None:
            raise InvalidSteering(f"SAE {sae!r} does not record its hook point; give probe `hook`")
        try:
            point = hook_point(lm.model, str(where))
        except Exception as e:
            raise InvalidSteering(str(e)) from e
        model = load_sae_ref(SteeringSpec(interventions=[]), FileRef(str(entry.path), entry.sha256), lm, point)
        return sae_probe(model, feature, point, sae)
    by_path = {str(s.path): n for n, s in registry.saes.items()}
    for point, ivs in steering.groups:
        for iv in ivs:
            if isinstance(iv, SAEFeatureIntervention):
                source = getattr(iv.sae, "source_path", None)
                name = by_path.get(str(source.resolve())) if source is not None else None
                return sae_probe(iv.sae, iv.edits[0].feature, point, name)
    point, ivs = steering.groups[0]
    iv = ivs[0]
    assert isinstance(iv, DirectionIntervention)
    unit = iv.unit

    def projection(x: torch.Tensor) -> torch.Tensor:
        return x.float() @ unit.to(x.device)

    return Probe(point, projection, {"kind": "direction", "hook": point.name})


def pieces(lm: ChatModel, ids: list[int]) -> list[str]:
    """The text each token adds (they concatenate to the decoded text)."""
    out, before = [], ""
    for i in range(len(ids)):
        text = lm.tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        out.append(text.removeprefix(before))
        before = text
    return out


@torch.inference_mode()
def token_activations(lm: ChatModel, conversation: Conversation, answer_ids: list[int],
                      steering: Steering | None, probe: Probe) -> list[dict[str, Any]]:
    """[{text, activation}] for every answer token, read with `steering` active (None: unsteered)."""
    if not answer_ids:
        return []
    prompt_ids = encode_prompt(lm, conversation, chat=True)
    ids = torch.tensor([prompt_ids + answer_ids], device=lm.device)
    roles = torch.tensor([prompt_roles(lm, len(prompt_ids), chat=True) + [GENERATED] * len(answer_ids)],
                         device=lm.device)
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: Any, _inputs: Any, output: Any) -> None:
        # The last call wins: a condition's pre-pass may run this block first, unsteered.
        captured["x"] = output_tensor(output)[0, len(prompt_ids):].detach()

    info = ForwardInfo(roles=roles, rows=torch.tensor([0], device=lm.device), prefill=True)
    # The capture hook is registered before the steering hooks, so it sees the block's output unedited.
    with forward_hooks([(probe.point.module, capture)]), \
            (steering.active() if steering is not None else contextlib.nullcontext()), forward_context(info):
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                 position_ids=torch.arange(ids.shape[1], device=lm.device)[None], use_cache=False, logits_to_keep=1)
    acts = probe.scores(captured["x"]).tolist()
    return [{"text": t, "activation": round(a, 4)} for t, a in zip(pieces(lm, answer_ids), acts)]
