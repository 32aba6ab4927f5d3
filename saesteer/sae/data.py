"""Where training activations come from: harvested shards, or a model run on a corpus.

Both sources are deterministic functions of (seed, position), so a resumed run skips exactly
the batches it has seen, and under data parallelism each rank reads its own share.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saesteer.activations import ActivationStore, contexts, token_stream
from saesteer.errors import SaesteerError
from saesteer.hooks import base_model, capture, hook_point, run_until_stopped
from saesteer.models import ChatModel


def check_finite(acts: torch.Tensor, where: str, row_offset: int = 0) -> None:
    if not torch.isfinite(acts).all():
        row = int((~torch.isfinite(acts)).any(dim=-1).nonzero()[0]) + row_offset
        raise SaesteerError(f"non-finite activation (NaN or inf) in {where}, row {row}; "
                            "re-harvest that shard (use --dtype float32 if float16 overflows)")


class CheckedStore(ActivationStore):
    """An `ActivationStore` that reads only its hook's tensor and rejects NaN/inf rows."""

    def load_shard(self, index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        path = self.folder / self.shards[index]
        try:
            with safe_open(str(path), framework="pt") as f:
                acts = f.get_tensor(self.hook)
        except Exception as e:  # safetensors raises assorted errors on damaged files
            raise SaesteerError(f"shard {path} is corrupt or truncated ({str(e).splitlines()[0][:100]}); "
                                "delete it and rerun saesteer harvest to rewrite it") from e
        self._check_rows(index, acts)
        check_finite(acts, f"shard {self.shards[index]}")
        return acts.to(dtype)

    def token_ids(self, index: int) -> torch.Tensor:
        path = self.folder / self.shards[index]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor("token_ids").long()
        except Exception as e:
            raise SaesteerError(f"shard {path} is corrupt or truncated ({str(e).splitlines()[0][:100]})") from e


@dataclass
class ShardSource:
    """Activations of one hook of a harvest folder; the last shards are held out."""

    folder: Path
    hook: int | str | None = None
    holdout_tokens: int = 200_000
    buffer_shards: int = 4
    store: CheckedStore = field(init=False)
    train_ids: list[int] = field(init=False)
    held_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.store = CheckedStore(self.folder, self.hook)
        self.train_ids, self.held_ids = self.store.split(self.holdout_tokens)

    @property
    def d_model(self) -> int:
        return self.store.d_model

    @property
    def train_tokens(self) -> int:
        return sum(self.store.manifest.shards[i]["tokens"] for i in self.train_ids)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        m = self.store.manifest
        return {"model_id": m.model_id, "revision": m.revision, "hook": self.store.hook,
                "d_model": m.d_model, "dataset": m.dataset, "context_length": m.context_length}

    def metadata(self) -> dict[str, Any]:
        m = self.store.manifest
        layer = self.store.layer
        return {"model_name": m.model_name, "model_id": m.model_id, "revision": m.revision,
                "hook_name": f"blocks.{layer}.hook_resid_post", "hf_hook_name": self.store.hook,
                "layer": layer, "context_size": m.context_length, "dataset": m.dataset,
                "prepend_bos": False, "activations": str(self.folder)}

    def batches(self, batch_tokens: int, *, seed: int, skip_batches: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[torch.Tensor]:
        ids = self.train_ids[rank::world] or self.train_ids
        return self.store.batches(ids, batch_tokens, seed=seed + 1000 * rank, buffer_shards=self.buffer_shards,
                                  epochs=None, skip_batches=skip_batches)

    def holdout(self, max_tokens: int, batch_tokens: int = 4096) -> Iterator[torch.Tensor]:
        ids = self.held_ids or self.train_ids[-1:]
        seen = 0
        for i in ids:
            acts = self.store.load_shard(i)
            for start in range(0, len(acts), batch_tokens):
                if seen >= max_tokens:
                    return
                chunk = acts[start:start + min(batch_tokens, max_tokens - seen)]
                seen += len(chunk)
                yield chunk

    def holdout_contexts(self, n: int) -> torch.Tensor:
        """Up to `n` held-out token contexts [n, context_length - 1] (first token dropped)."""
        per = self.store.manifest.context_length - 1
        out, have = [], 0
        for i in self.held_ids or self.train_ids[-1:]:
            ids = self.store.token_ids(i)
            out.append(ids[:len(ids) // per * per].view(-1, per))
            have += len(out[-1])
            if have >= n:
                break
        return torch.cat(out)[:n]


@dataclass
class StreamSource:
    """Activations computed on the fly: `lm` run over a corpus, `buffer_contexts` contexts at a time.

    The first `holdout_contexts` contexts of the token stream are held out for the metrics.
    """

    lm: ChatModel
    layer: int | str
    dataset: str = "corpus"
    context_length: int = 512
    batch_contexts: int = 8
    buffer_contexts: int = 64
    holdout_tokens: int = 200_000
    seed: int = 0
    point: Any = field(init=False)

    def __post_init__(self) -> None:
        self.point = hook_point(self.lm.model, self.layer)
        if self.context_length > self.lm.context_length:
            raise SaesteerError(f"context length {self.context_length} exceeds the model's {self.lm.context_length}")

    @property
    def d_model(self) -> int:
        return self.lm.d_model

    @property
    def per_context(self) -> int:
        return self.context_length - 1

    @property
    def n_holdout_contexts(self) -> int:
        return max(1, -(-self.holdout_tokens // self.per_context))

    train_tokens = None

    def identity(self) -> dict[str, Any]:
        return {"model_id": self.lm.model_id, "revision": self.lm.revision, "hook": self.point.name,
                "d_model": self.d_model, "dataset": self.dataset, "context_length": self.context_length}

    def metadata(self) -> dict[str, Any]:
        return {"model_name": self.lm.name, "model_id": self.lm.model_id, "revision": self.lm.revision,
                "hook_name": self.point.tl_name, "hf_hook_name": self.point.name, "layer": self.point.layer,
                "context_size": self.context_length, "dataset": self.dataset, "prepend_bos": False}

    def _contexts(self) -> Iterator[list[int]]:
        from saesteer.data.corpus import corpus_documents

        return contexts(token_stream(self.lm, corpus_documents(self.dataset, seed=self.seed)), self.context_length)

    @torch.inference_mode()
    def _activations(self, ctxs: list[list[int]]) -> torch.Tensor:
        model = base_model(self.lm.model)
        out = []
        for start in range(0, len(ctxs), self.batch_contexts):
            ids = torch.tensor(ctxs[start:start + self.batch_contexts], device=self.lm.device)
            with capture(model, [self.point.layer]) as acts:
                run_until_stopped(lambda: model(input_ids=ids, use_cache=False))
            out.append(acts[self.point.layer][:, 1:].reshape(-1, self.d_model).float().cpu())
        acts = torch.cat(out)
        check_finite(acts, f"the activations of {self.lm.name} at {self.point.name}")
        return acts

    def batches(self, batch_tokens: int, *, seed: int, skip_batches: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[torch.Tensor]:
        per_buffer = self.buffer_contexts * self.per_context // batch_tokens
        if per_buffer < 1:
            raise SaesteerError(f"a buffer of {self.buffer_contexts} contexts is smaller than one batch; "
                                "raise buffer_contexts or lower batch_tokens")
        stream = self._contexts()
        for _ in range(self.n_holdout_contexts):
            next(stream, None)
        buffer_index = 0  # counts this rank's buffers; rank r owns global buffers r, r + world, ...
        first, skip_in = divmod(skip_batches, per_buffer)
        while True:
            for r in range(world):
                ctxs = [c for _, c in zip(range(self.buffer_contexts), stream)]
                if len(ctxs) < self.buffer_contexts:
                    raise SaesteerError(f"dataset {self.dataset!r} ran out after {buffer_index} buffers; "
                                        "lower --max-tokens or use more data")
                if r != rank:
                    continue
                if buffer_index >= first:
                    acts = self._activations(ctxs)
                    g = torch.Generator().manual_seed(seed * 7919 + 1000 * rank + buffer_index)
                    acts = acts[torch.randperm(len(acts), generator=g)]
                    for b in range(skip_in if buffer_index == first else 0, per_buffer):
                        yield acts[b * batch_tokens:(b + 1) * batch_tokens]
                buffer_index += 1

    def holdout(self, max_tokens: int, batch_tokens: int = 4096) -> Iterator[torch.Tensor]:
        acts = self._activations(self.holdout_contexts(self.n_holdout_contexts).tolist())[:max_tokens]
        yield from acts.split(batch_tokens)

    def holdout_contexts(self, n: int) -> torch.Tensor:
        """Up to `n` held-out contexts [n, context_length]."""
        ctxs = [c for _, c in zip(range(min(n, self.n_holdout_contexts)), self._contexts())]
        return torch.tensor(ctxs) if ctxs else torch.zeros(0, self.context_length, dtype=torch.long)
