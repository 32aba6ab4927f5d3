"""SAE quality on held-out tokens: reconstruction, sparsity, and the model with the SAE spliced in.

* FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all evaluated tokens; MSE is the
  per-element mean; L0 the mean number of non-zero codes per token; dead fraction the share
  of latents that never fire over the evaluated tokens.
* Spliced: the block output at the SAE's layer is replaced by its reconstruction (at every
  position but the first, the attention sink that harvests drop), or by zeros; next-token CE
  is measured on the predictions that follow, CE loss recovered =
  (CE_zero - CE_spliced) / (CE_zero - CE_clean), and KL(clean || spliced) per token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.hooks import forward_hooks, hook_point, output_tensor, replace_output
from saesteer.models import ChatModel
from saesteer.sae.base import SAE
from saesteer.sae.topk import TopKSAE


class ReconstructionStats:
    """Running sums for FVU, MSE, L0 and firing over batches of activations."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = 0.0
        self.err_sq = 0.0
        self.nonzero = 0
        self.fired = torch.zeros(d_sae, dtype=torch.bool)

    @torch.no_grad()
    def add(self, sae: SAE, x: torch.Tensor) -> None:
        x = x.reshape(-1, sae.d_in).to(sae.device, sae.dtype)
        if isinstance(sae, TopKSAE):
            values, indices = sae.encode_sparse(x)
            x_hat = sae.decode_sparse(values, indices)
            active = values > 0
            self.fired[indices[active].cpu()] = True
            self.nonzero += int(active.sum())
        else:
            z = sae.encode(x)
            x_hat = sae.decode(z)
            active = z > 0
            self.fired |= active.any(0).cpu()
            self.nonzero += int(active.sum())
        xd = x.double()
        self.n += len(x)
        self.sum_x = xd.sum(0) if self.sum_x is None else self.sum_x + xd.sum(0)
        self.sum_sq += float(xd.pow(2).sum())
        self.err_sq += float((xd - x_hat.double()).pow(2).sum())

    def result(self, d_in: int) -> dict[str, Any]:
        if self.n == 0:
            raise SaesteerError("no tokens to evaluate the SAE on")
        assert self.sum_x is not None
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        return {"fvu": self.err_sq / total_var, "mse": self.err_sq / (self.n * d_in),
                "l0": self.nonzero / self.n, "dead_fraction": 1.0 - float(self.fired.float().mean()),
                "dead_window_tokens": self.n, "eval_tokens": self.n}


def reconstruction_metrics(sae: SAE, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
    """FVU, MSE, L0 and dead fraction over activation batches [n, d_in]."""
    stats = ReconstructionStats(sae.d_sae)
    for x in batches:
        if x.shape[-1] != sae.d_in:
            raise SaesteerError(f"activations have width {x.shape[-1]} but the SAE expects d_in = {sae.d_in}")
        stats.add(sae, x)
    return stats.result(sae.d_in)


def _sae_layer(sae: SAE, lm: ChatModel) -> int:
    meta = sae.metadata
    where = meta.get("hf_hook_name") or meta.get("hook_name")
    if meta.get("layer") is None and not where:
        raise SaesteerError("the SAE's metadata names no hook point; cannot splice it into the model")
    point = hook_point(lm.model, meta["layer"] if meta.get("layer") is not None else where)
    if lm.d_model != sae.d_in:
        raise SaesteerError(f"model {lm.name} has width {lm.d_model} but the SAE expects d_in = {sae.d_in}")
    return point.layer


@torch.no_grad()
def spliced_metrics(sae: SAE, lm: ChatModel, contexts: torch.Tensor, *, batch_size: int = 2,
                    skip_first: int = 1, progress: bool = True,
                    on_acts: Callable[[torch.Tensor], None] | None = None) -> dict[str, Any]:
    """CE clean / spliced / zero-ablated, CE loss recovered and KL on token `contexts` [n, T].

    `on_acts` receives the clean activations at the SAE's layer (positions >= skip_first).
    """
    if contexts.ndim != 2 or contexts.shape[1] < skip_first + 2:
        raise SaesteerError("need token contexts of at least 3 tokens for the spliced metrics")
    point = hook_point(lm.model, _sae_layer(sae, lm))
    mode: dict[str, str] = {"m": "clean"}

    def hook(_m: Any, _i: Any, output: Any) -> Any:
        h = output_tensor(output)
        if mode["m"] == "clean":
            if on_acts is not None:
                on_acts(h[:, skip_first:].reshape(-1, h.shape[-1]))
            return None
        new = h.clone()
        tail = h[:, skip_first:]
        new[:, skip_first:] = 0 if mode["m"] == "zero" else sae(tail.to(sae.device)).to(h.dtype)
        return replace_output(output, new)

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n_tokens = 0
    bar = tqdm(total=len(contexts), desc="spliced CE", unit="ctx", disable=not progress, leave=False)
    with forward_hooks([(point.module, hook)]):
        for start in range(0, len(contexts), batch_size):
            ids = contexts[start:start + batch_size].to(lm.device)
            targets = ids[:, skip_first + 1:].reshape(-1)
            logps = {}
            for m in ("clean", "spliced", "zero"):
                mode["m"] = m
                logits = lm.model(input_ids=ids, use_cache=False).logits[:, skip_first:-1].float()
                lp = logits.log_softmax(-1).reshape(-1, logits.shape[-1])
                sums[m] += float(F.nll_loss(lp, targets, reduction="sum"))
                if m != "zero":
                    logps[m] = lp
                del logits
            sums["kl"] += float(F.kl_div(logps["spliced"], logps["clean"], log_target=True, reduction="sum"))
            n_tokens += len(targets)
            bar.update(len(ids))
    bar.close()
    ce = {m: sums[m] / n_tokens for m in ("clean", "spliced", "zero")}
    gap = ce["zero"] - ce["clean"]
    return {"ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablated": ce["zero"],
            "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / gap if gap != 0 else float("nan"),
            "kl_spliced": sums["kl"] / n_tokens, "ce_tokens": n_tokens, "ce_contexts": len(contexts)}


def evaluate_sae(sae: SAE, *, activations: Iterable[torch.Tensor] | None = None, lm: ChatModel | None = None,
                 contexts: torch.Tensor | None = None, batch_size: int = 2, progress: bool = True) -> dict[str, Any]:
    """All metrics this data allows: reconstruction on `activations` (or on the model's own
    activations over `contexts` when none are given) and spliced CE/KL with `lm`."""
    out: dict[str, Any] = {}
    stats = ReconstructionStats(sae.d_sae)
    if activations is not None:
        out.update(reconstruction_metrics(sae, activations))
    if lm is not None and contexts is not None and len(contexts):
        on_acts = None if activations is not None else (lambda h: stats.add(sae, h.float()))
        out.update(spliced_metrics(sae, lm, contexts, batch_size=batch_size, progress=progress, on_acts=on_acts))
        if activations is None:
            out.update(stats.result(sae.d_in))
    if not out:
        raise SaesteerError("nothing to evaluate on: give activations, or a model and texts")
    return out
