"""Steering vectors built from SAE latents: CAA denoised through the SAE.

CAA adds the mean residual of refusal replies minus that of compliance replies. Read through
an SAE, the same contrast is a difference of mean latent codes; most of its mass sits on a few
latents that fire on refusal text, the rest on latents that only separate the two fixed sets
of reply wordings. Keeping the top latents and adding each one's decoder row (weighted by its
code difference) gives a sparse, interpretable refusal vector (SDCV, arXiv 2505.15038): a list
of SAE feature `add` edits that any steering spec can carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saesteer.data.replies import COMPLIANCE_REPLIES, REFUSAL_REPLIES
from saesteer.errors import SaesteerError
from saesteer.hooks import hook_point
from saesteer.models import ChatModel
from saesteer.steer.directions import contrast_pairs, mean_residuals
from saesteer.steer.interventions import FeatureEdit


@dataclass
class LatentContrast:
    """Mean code of every latent on refusal replies minus compliance replies, and the dense CAA
    vector measured on the same replies (the norm the SAE vectors are scaled to)."""

    difference: torch.Tensor
    """[d_sae]"""
    caa: torch.Tensor
    """[d_model]"""

    def top_latents(self, n: int) -> list[int]:
        """The `n` latents whose codes rise most on refusals (only latents that rise at all)."""
        if n < 1:
            raise SaesteerError(f"the number of latents must be at least 1, got {n}")
        order = torch.argsort(self.difference, descending=True)[:n]
        return [int(i) for i in order if self.difference[i] > 0]


def latent_contrast(lm: ChatModel, sae, hook: str | int, prompts: Sequence[str], *,
                    refusals: Sequence[str] = REFUSAL_REPLIES, compliances: Sequence[str] = COMPLIANCE_REPLIES,
                    batch_size: int = 8, progress: bool | str = False) -> LatentContrast:
    """Read each prompt answered by every refusal and every compliance reply; average the
    residual and its SAE codes over the reply tokens."""
    if not prompts:
        raise SaesteerError("the SAE refusal contrast needs at least one prompt")
    layer = hook_point(lm.model, hook).layer
    pos, neg = contrast_pairs(prompts, refusals, compliances)

    def with_codes(h: torch.Tensor) -> torch.Tensor:
        codes = sae.encode(h.to(sae.W_dec.device, sae.W_dec.dtype))
        return torch.cat([h.float(), codes.float().to(h.device)], dim=-1)

    kw = {"select": "response", "batch_size": batch_size, "transform": with_codes}
    a = mean_residuals(lm, pos, [layer], progress=progress, **kw)[layer].mean(0)
    b = mean_residuals(lm, neg, [layer], progress=progress, **kw)[layer].mean(0)
    d = lm.d_model
    return LatentContrast(difference=a[d:] - b[d:], caa=a[:d] - b[:d])


def denoised_edits(contrast: LatentContrast, sae, n_latents: int, strength: float) -> list[FeatureEdit]:
    """`add` edits on the top `n_latents` refusal latents, weighted by their code difference and
    scaled so the added vector has `strength` times the dense CAA vector's norm."""
    latents = contrast.top_latents(n_latents)
    if not latents:
        raise SaesteerError("no SAE latent fires more on refusal replies than on compliance replies; "
                            "this SAE has no refusal latents to steer with (train it on chat text with refusals)")
    idx = torch.tensor(latents)
    weights = contrast.difference[idx].float()
    vector = weights @ sae.W_dec.detach().float().cpu()[idx]
    scale = strength * float(contrast.caa.norm()) / max(float(vector.norm()), 1e-12)
    return [FeatureEdit(i, "add", round(float(w) * scale, 5)) for i, w in zip(latents, weights.tolist())]
