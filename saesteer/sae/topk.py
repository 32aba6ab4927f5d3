"""The Top-k SAE of Gao et al. 2024: z = relu(top-k((x - b_dec) @ W_enc + b_enc))."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.sae.base import SAE


class SparseCodes(NamedTuple):
    values: Tensor
    """[..., k] activations of the selected latents (non-negative)."""
    indices: Tensor
    """[..., k] their latent ids."""


class TopKSAE(SAE):
    """Top-k SAE with unit-norm decoder rows (in training) and a sparse decode."""

    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, **kw: Any):
        super().__init__(d_in, d_sae, **kw)
        if not 0 < k <= d_sae:
            raise SaesteerError(f"k = {k} must be between 1 and the dictionary size {d_sae}")
        self.k = int(k)

    @classmethod
    def init(cls, d_in: int, d_sae: int, k: int, *, seed: int = 0, b_dec: Tensor | None = None,
             **kw: Any) -> TopKSAE:
        """Fresh SAE: random unit-norm decoder rows, encoder = decoder transpose."""
        sae = cls(d_in, d_sae, k, **kw)
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_sae, d_in, generator=g, dtype=torch.float32)
        W /= W.norm(dim=1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(W)
            sae.W_enc.copy_(W.t())
            if b_dec is not None:
                sae.b_dec.copy_(b_dec)
        return sae

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        values, indices = self.pre_acts(x).topk(self.k, dim=-1, sorted=False)
        return SparseCodes(values.relu(), indices)

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        shape = indices.shape
        out = F.embedding_bag(indices.reshape(-1, shape[-1]), self.W_dec,
                              per_sample_weights=values.reshape(-1, shape[-1]).to(self.dtype), mode="sum")
        return out.view(*shape[:-1], self.d_in) + self.b_dec

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_sparse(*self.encode_sparse(x))

    def feature_acts(self, x: Tensor, idx: Tensor) -> Tensor:
        # Whether a latent is in the top k depends on all pre-activations.
        pre = self.pre_acts(x)
        _, top = pre.topk(self.k, dim=-1, sorted=False)
        idx = idx.to(pre.device)
        selected = (top.unsqueeze(-1) == idx).any(dim=-2)
        return torch.where(selected, pre[..., idx].relu(), torch.zeros((), dtype=pre.dtype, device=pre.device))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.dtype).eps))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out of each decoder row's gradient its component along the row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)
