"""Sparse autograd ops for Top-k SAE training.

The encoder's forward is the only dense product a Top-k SAE needs. Everything after the
top-k selection touches k latents per token, so the backward is sparse too:

* `topk_autoencode`: one op for `relu(top-k([x - b_dec, 1] @ [W_enc; b_enc]))` and the sparse
  decode `sum_j z_j W_dec[i_j]`. The bias rides along as an extra input column, so the
  [tokens, d_sae] pre-activations are written once. Its backward computes the code gradients
  with a sampled product, and the gradients of the decoder rows and encoder columns (bias
  included) as latent-major CSR products `S^T @ g` and `S^T @ [x - b_dec, 1]` that share one
  sort of the latent ids.
* `sparse_decode`: the decode alone (used for AuxK), with the same backward.

Measured on 2 CPU cores (576 -> 4,608, k = 32, 4,096 tokens, a shared machine): the CSR
product takes ~40 ms where index_add over materialised (tokens*k, d) contributions (sparsify's
backward) takes ~350 ms and the dense `G^T @ x` ~500 ms; the sampled product ~30 ms against
~560 ms for dense-then-gather and ~600 ms for gather-then-bmm. On CUDA the index_add and
gather paths are used.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


_full_threads: int | None = None


@contextlib.contextmanager
def few_threads(enabled: bool = True) -> Iterator[None]:
    """Run the small ops inside on one thread; `all_threads()` marks the heavy ones.

    On a busy shared CPU every parallel region can stall for a scheduler time slice (~20 ms
    measured) while a worker thread waits to run, and a training step has dozens of small
    element-wise ops; run alone, each takes well under a millisecond.
    """
    global _full_threads
    if not enabled or _full_threads is not None or torch.get_num_threads() == 1:
        yield
        return
    _full_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(_full_threads)
        _full_threads = None


@contextlib.contextmanager
def all_threads() -> Iterator[None]:
    """Inside `few_threads`: use every thread for the large products."""
    if _full_threads is None:
        yield
        return
    torch.set_num_threads(_full_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


class RowPlan(NamedTuple):
    """Where each (token, slot) of an [n, k] index matrix lands in a latent-major CSR matrix."""

    crow: Tensor
    tokens: Tensor
    order: Tensor
    n: int
    k: int
    n_rows: int


def row_plan(indices: Tensor, n_rows: int) -> RowPlan:
    n, k = indices.shape
    flat = indices.reshape(-1).to(torch.int32)
    # A stable sort keeps each latent's tokens in ascending order (a canonical CSR).
    sorted_idx, order = torch.sort(flat, stable=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(sorted_idx, minlength=n_rows).cumsum(0)
    return RowPlan(crow, torch.div(order, k, rounding_mode="floor"), order, n, k, n_rows)


def scatter_rows(indices: Tensor, weights: Tensor, src: Tensor, n_rows: int, plan: RowPlan | None = None) -> Tensor:
    """`out[indices[n, j]] += weights[n, j] * src[n]`, an [n_rows, d] output (= S^T @ src)."""
    w = weights.reshape(-1).to(src.dtype)
    if src.device.type == "cuda":
        n, k = indices.shape
        out = torch.zeros(n_rows, src.shape[1], dtype=src.dtype, device=src.device)
        return out.index_add_(0, indices.reshape(-1), (w.view(n, k, 1) * src.unsqueeze(1)).reshape(-1, src.shape[1]))
    plan = plan or row_plan(indices, n_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        s_t = torch.sparse_csr_tensor(plan.crow, plan.tokens, w[plan.order], (n_rows, plan.n), check_invariants=False)
    with all_threads():
        return s_t @ src


def gather_dots(indices: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """`out[n, j] = a[n] . b[indices[n, j]]` (sampled a @ b^T), shape of `indices`."""
    n, k = indices.shape
    if a.device.type == "cpu":
        crow = torch.arange(0, n * k + 1, k, device=a.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pattern = torch.sparse_csr_tensor(crow, indices.reshape(-1), torch.zeros(n * k, dtype=a.dtype),
                                              (n, b.shape[0]), check_invariants=False)
        with all_threads():
            return torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values().view(n, k)
    return torch.bmm(b[indices], a.unsqueeze(2)).squeeze(2)


def _augmented(x: Tensor, b_dec: Tensor) -> Tensor:
    """[x - b_dec, 1] in one pass."""
    xa = torch.empty(x.shape[0], x.shape[1] + 1, dtype=x.dtype, device=x.device)
    torch.sub(x, b_dec, out=xa[:, :-1])
    xa[:, -1] = 1
    return xa


class TopKAutoencode(torch.autograd.Function):
    """(recon, values, indices, aux_values, aux_indices); recon = decode without b_dec."""

    @staticmethod
    def forward(ctx, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, k: int,
                dead: Tensor | None, k_aux: int, matmul_dtype: torch.dtype | None):  # type: ignore[override]
        xa = _augmented(x, b_dec)
        w_aug = torch.cat([W_enc, b_enc[None]], 0)
        with all_threads():
            if matmul_dtype is not None and matmul_dtype != xa.dtype:
                pre = (xa.to(matmul_dtype) @ w_aug.to(matmul_dtype)).to(xa.dtype)
            else:
                pre = xa @ w_aug
            values, indices = pre.topk(k, dim=-1, sorted=False)
        values.relu_()
        if dead is not None and k_aux > 0 and len(dead) > 0:
            # AuxK: the top-k_aux pre-activations among the dead latents only.
            with all_threads():
                aux_values, pos = pre.index_select(1, dead).topk(min(k_aux, len(dead)), dim=-1, sorted=False)
            aux_values.relu_()
            aux_indices = dead[pos]
        else:
            aux_values = pre.new_zeros(len(x), 0)
            aux_indices = indices.new_zeros(len(x), 0)
        del pre
        with all_threads():
            recon = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
        ctx.save_for_backward(xa, W_enc, W_dec, values, indices, aux_values, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return recon, values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, g_recon: Tensor, g_values: Tensor, _gi: Tensor, g_aux: Tensor, _gai: Tensor):  # type: ignore[override]
        xa, W_enc, W_dec, values, indices, aux_values, aux_indices = ctx.saved_tensors
        d_sae, d_in = W_dec.shape
        g_recon = g_recon.contiguous()
        plan = row_plan(indices, d_sae) if g_recon.device.type == "cpu" else None
        grad_W_dec = scatter_rows(indices, values, g_recon, d_sae, plan) if ctx.needs_input_grad[4] else None
        g_enc = (gather_dots(indices, g_recon, W_dec) + g_values) * (values > 0)
        enc_indices = indices
        if aux_indices.shape[1]:
            g_enc = torch.cat([g_enc, g_aux * (aux_values > 0)], 1)
            enc_indices = torch.cat([indices, aux_indices], 1)
            plan = row_plan(enc_indices, d_sae) if plan is not None else None
        grad_x = grad_b_dec = grad_W_enc = grad_b_enc = None
        if any(ctx.needs_input_grad[1:4]):
            # Row j of S^T @ [x - b_dec, 1]: the gradient of encoder column j, then of b_enc[j].
            grad_aug = scatter_rows(enc_indices, g_enc, xa, d_sae, plan)
            grad_W_enc, grad_b_enc = grad_aug[:, :d_in].t(), grad_aug[:, d_in]
            grad_b_dec = -(W_enc @ grad_b_enc)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(enc_indices, W_enc.t().contiguous(), per_sample_weights=g_enc, mode="sum")
        return grad_x, grad_b_dec, grad_W_enc, grad_b_enc, grad_W_dec, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """sum_j values[n, j] * W_dec[indices[n, j]] (no bias)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        g = g.contiguous()
        grad_values = gather_dots(indices, g, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = scatter_rows(indices, values, g, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W


def topk_autoencode(x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, k: int,
                    dead: Tensor | None = None, k_aux: int = 0, matmul_dtype: torch.dtype | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top-k encode and decode `x` [n, d_in] with a sparse backward.

    Returns (recon without b_dec, values, indices, aux_values, aux_indices); the AuxK codes are
    the top `k_aux` pre-activations among the `dead` latent ids. `matmul_dtype` (e.g. bfloat16)
    runs only the dense encoder product in that dtype.
    """
    return TopKAutoencode.apply(x, b_dec, W_enc, b_enc, W_dec, k, dead, k_aux, matmul_dtype)  # type: ignore[return-value]


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Decode [n, k] codes at `indices` through `W_dec` [d_sae, d_in], with a sparse backward."""
    return SparseDecode.apply(values, indices, W_dec)  # type: ignore[return-value]
