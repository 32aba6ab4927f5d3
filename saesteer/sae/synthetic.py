"""Synthetic activations in harvest layout, for tests and benchmarks without a model.

Each token is a sparse non-negative mix of ground-truth unit directions plus a shared offset
and a little noise, so a Top-k SAE of the right size can reach a low FVU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from saesteer.activations import MANIFEST, Manifest
from saesteer.files import atomic_path, ensure_dir, write_json


def synthetic_activations(n: int, d: int, *, n_features: int = 256, active: int = 4, noise: float = 0.05,
                          seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d, generator=torch.Generator().manual_seed(12345))
    dirs /= dirs.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=torch.Generator().manual_seed(54321))
    # Zipf-like feature frequencies, as in real models.
    probs = 1.0 / torch.arange(1, n_features + 1).float() ** 0.7
    idx = torch.multinomial(probs.expand(n, -1), active, replacement=False, generator=g)
    mags = torch.rand(n, active, generator=g) * 4 + 1
    x = torch.zeros(n, d).index_add_(0, torch.arange(n).repeat_interleave(active),
                                     (mags.reshape(-1, 1) * dirs[idx.reshape(-1)]))
    return x + offset + noise * torch.randn(n, d, generator=g)


def synthetic_harvest(out: str | Path, *, n_tokens: int = 65_536, d: int = 64, shard_tokens: int = 8192,
                      layers: tuple[int, ...] = (1,), model_id: str = "synthetic/sparse", seed: int = 0,
                      dtype: torch.dtype = torch.float16, **kw: float) -> Manifest:
    """Write `n_tokens` synthetic activations per layer as a harvest folder."""
    out = ensure_dir(out)
    hooks = [f"model.layers.{layer}" for layer in layers]
    manifest = Manifest(model_name=model_id, model_id=model_id, revision=None, hooks=hooks, layers=list(layers),
                        d_model=d, dtype=str(dtype).removeprefix("torch."), context_length=65, dataset="synthetic",
                        seed=seed, dropped=[])
    for i, start in enumerate(range(0, n_tokens, shard_tokens)):
        n = min(shard_tokens, n_tokens - start)
        tensors = {h: synthetic_activations(n, d, seed=seed * 100_003 + i * 17 + j, **kw).to(dtype)  # type: ignore[arg-type]
                   for j, h in enumerate(hooks)}
        tensors["token_ids"] = torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(i), dtype=torch.int32)
        name = f"shard_{i:05d}.safetensors"
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp))
        manifest.shards.append({"file": name, "tokens": n, "contexts": n // 64})
    manifest.complete = True
    write_json(out / MANIFEST, manifest.to_dict())
    return manifest
