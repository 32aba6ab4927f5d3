"""The SAE interface shared by every architecture, and the ReLU and JumpReLU SAEs.

All SAEs act on raw residual-stream activations: `encode(x)` gives dense codes [..., d_sae]
exactly as SAELens' `encode` would, `decode(z)` the reconstruction. Any input scaling used in
training is folded into the weights before an SAE leaves the trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from saesteer.files import sha256_file


class SAE(nn.Module):
    """x -> z = act((x - b_dec) @ W_enc + b_enc) -> x_hat = z @ W_dec + b_dec."""

    architecture: ClassVar[str] = ""
    k: int | None = None

    def __init__(self, d_in: int, d_sae: int, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", apply_b_dec_to_input: bool = True,
                 metadata: dict[str, Any] | None = None):
        super().__init__()
        self.d_in, self.d_sae = int(d_in), int(d_sae)
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.apply_b_dec_to_input = apply_b_dec_to_input
        """SAELens' flag: subtract b_dec before the encoder (off for e.g. Gemma Scope)."""
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.source_path: Path | None = None
        """Where the SAE was loaded from (None for one built in memory)."""
        self.weights_file: Path | None = None
        self._file_hash: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def _centered(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [..., d_sae]."""
        return self._centered(x) @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes [..., d_sae] of activations `x` [..., d_in]."""
        return self.activation(self.pre_acts(x))

    def decode(self, z: Tensor) -> Tensor:
        return z.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def feature_acts(self, x: Tensor, idx: Tensor) -> Tensor:
        """Codes of the latents `idx` only, equal to `encode(x)[..., idx]`."""
        pre = self._centered(x) @ self.W_enc[:, idx] + self.b_enc[idx]
        return self._columns_activation(pre, idx)

    def _columns_activation(self, pre: Tensor, idx: Tensor) -> Tensor:
        return pre.relu()

    def state_tensors(self) -> dict[str, Tensor]:
        """The tensors of the SAELens weights file."""
        return {"W_enc": self.W_enc.detach(), "W_dec": self.W_dec.detach(),
                "b_enc": self.b_enc.detach(), "b_dec": self.b_dec.detach()}

    def content_hash(self) -> str:
        """sha256 (hex) of the weights file this SAE was loaded from, or of the file `save_sae`
        would write for it."""
        if self.weights_file is None:
            tensors = {k: v.contiguous().cpu() for k, v in self.state_tensors().items()}
            return hashlib.sha256(safetensors_bytes(tensors)).hexdigest()
        if self._file_hash is None:
            self._file_hash = sha256_file(self.weights_file)
        return self._file_hash

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture!r}, k={self.k}"


class ReluSAE(SAE):
    """SAELens' `standard` SAE: z = relu(pre)."""

    architecture = "relu"

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()


class JumpReLUSAE(SAE):
    """z = pre if pre > threshold else 0 (Gemma Scope, Llama Scope, SAELens `jumprelu`)."""

    architecture = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, **kw: Any):
        super().__init__(d_in, d_sae, **kw)
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)

    def _columns_activation(self, pre: Tensor, idx: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold[idx])

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "threshold": self.threshold.detach()}
