"""Harvest residual-stream activations to sharded safetensors, and read them back in batches.

Layout of a harvest folder:

    manifest.json                 model, hooks, dtype, context length, tokens, dropped tokens, shards
    shard_00000.safetensors       one [tokens, d_model] tensor per hook (keys = hook names)
                                  plus `token_ids` [tokens] (int32)

Documents are rendered (chats with the model's chat template), joined with the end-of-text
token and cut into fixed-length contexts, so no padding is needed. The first token of every
context is dropped: it is the attention sink, whose norm is orders of magnitude larger than
the rest. The token stream is a pure function of (dataset, seed, tokenizer, context length),
so an interrupted run resumes after its last complete shard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from saesteer.data.corpus import Document, corpus_documents
from saesteer.errors import SaesteerError, at_least
from saesteer.files import atomic_path, ensure_dir, read_json, write_json
from saesteer.hooks import base_model, capture, hook_point, run_until_stopped
from saesteer.models import ChatModel

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class HarvestConfig:
    layers: list[int | str]
    """Hook points (layer indices or module paths); all are read in one forward pass."""
    dataset: str = "corpus"
    """A corpus spec (`corpus`, `corpus:gutenberg_classics`) or any dataset name."""
    max_tokens: int = 1_000_000
    """Activations to keep per hook (after dropping the first token of each context)."""
    context_length: int = 512
    batch_size: int = 8
    """Contexts per forward pass."""
    shard_tokens: int = 65_536
    """Approximate tokens per shard (rounded to whole batches)."""
    dtype: str = "float16"
    """Storage dtype: float16 halves the disk of float32 with ~5e-4 relative error."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise SaesteerError(f"unknown storage dtype {self.dtype}; use {', '.join(STORE_DTYPES)}")
        at_least(1, max_tokens=self.max_tokens, batch_size=self.batch_size, shard_tokens=self.shard_tokens)
        at_least(2, context_length=self.context_length)


@dataclass
class Manifest:
    model_name: str
    model_id: str
    revision: str | None
    hooks: list[str]
    layers: list[int]
    d_model: int
    dtype: str
    context_length: int
    dataset: str
    seed: int
    dropped: list[str]
    shards: list[dict] = field(default_factory=list)
    """Each: {file, tokens, contexts}; only complete shards are listed."""
    complete: bool = False
    format_version: int = FORMAT_VERSION
    tokens_per_second: float | None = None

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_tokens"] = self.n_tokens
        return d

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise SaesteerError(f"{folder} is not an activation folder (no {MANIFEST}); run saesteer harvest first")
        data = read_json(path)
        if not isinstance(data, dict):
            raise SaesteerError(f"{path} is a JSON {type(data).__name__}, not a manifest object; "
                                "rerun saesteer harvest into a new --out")
        data.pop("n_tokens", None)
        if data.get("format_version") != FORMAT_VERSION:
            raise SaesteerError(f"{path} has format version {data.get('format_version')}, expected {FORMAT_VERSION}")
        try:
            manifest = cls(**data)
        except TypeError as e:
            raise SaesteerError(f"{path} is not a saesteer manifest ({e})") from e
        manifest._check(path)
        return manifest

    def _check(self, path: Path) -> None:
        """Shape and counts, once, where the manifest is read: later code indexes by them."""
        def bad(what: str) -> SaesteerError:
            return SaesteerError(f"{path} is damaged: {what}; rerun saesteer harvest into a new --out")

        if not isinstance(self.hooks, list) or not isinstance(self.layers, list) or len(self.hooks) != len(self.layers):
            raise bad("`hooks` and `layers` must be lists of the same length")
        if not self.hooks or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers):
            raise bad(f"`layers` must be block indices, got {self.layers!r}")
        if not isinstance(self.d_model, int) or isinstance(self.d_model, bool) or self.d_model < 1:
            raise bad(f"d_model = {self.d_model!r} is not a positive whole number")
        if not isinstance(self.context_length, int) or self.context_length < 2:
            raise bad(f"context_length = {self.context_length!r} is not a whole number >= 2")
        if not isinstance(self.shards, list):
            raise bad("`shards` must be a list")
        for i, shard in enumerate(self.shards):
            if not isinstance(shard, dict):
                raise bad(f"shard entry {i} is {shard!r}, not an object with file, tokens and contexts")
            for key in ("file", "tokens", "contexts"):
                if key not in shard:
                    raise bad(f"shard entry {i} has no {key!r}")
            if not isinstance(shard["file"], str) or "/" in shard["file"] or shard["file"].startswith("."):
                raise bad(f"shard entry {i} names {shard['file']!r}, not a shard file of this folder")
            for key in ("tokens", "contexts"):
                value = shard[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise bad(f"shard entry {i} has {key} = {value!r}, not a whole number >= 0")


def token_stream(lm: ChatModel, docs: list[Document]) -> Iterator[int]:
    """Tokens of all documents, each followed by the end-of-text token."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    batch: list[str] = []

    def render(doc: Document) -> str:
        return lm.chat(doc, add_generation_prompt=False) if isinstance(doc, list) else doc

    for doc in docs:
        batch.append(render(doc))
        if len(batch) == 64:
            for ids in tok(batch, add_special_tokens=False)["input_ids"]:
                yield from ids
                yield eos
            batch = []
    if batch:
        for ids in tok(batch, add_special_tokens=False)["input_ids"]:
            yield from ids
            yield eos


def contexts(stream: Iterator[int], length: int) -> Iterator[list[int]]:
    buf: list[int] = []
    for t in stream:
        buf.append(t)
        if len(buf) == length:
            yield buf
            buf = []


def harvest(lm: ChatModel, out: str | Path, config: HarvestConfig, *, progress: bool = True) -> Manifest:
    """Write activations for `config.layers` to `out`, resuming an interrupted run there."""
    out = ensure_dir(out)
    points = [hook_point(lm.model, w) for w in config.layers]
    if len({p.layer for p in points}) != len(points):
        raise SaesteerError("the same layer was given twice")
    if config.context_length > lm.context_length:
        raise SaesteerError(f"context length {config.context_length} exceeds the model's {lm.context_length}")
    manifest = Manifest(
        model_name=lm.name, model_id=lm.model_id, revision=lm.revision,
        hooks=[p.name for p in points], layers=[p.layer for p in points], d_model=lm.d_model,
        dtype=config.dtype, context_length=config.context_length, dataset=config.dataset,
        seed=config.seed, dropped=["first token of each context (attention sink)"])
    if (out / MANIFEST).exists():
        old = Manifest.load(out)
        for key in ("model_id", "revision", "dtype", "context_length", "dataset", "seed"):
            if getattr(old, key) != getattr(manifest, key):
                raise SaesteerError(f"{out} holds a harvest with a different {key} "
                                    f"({getattr(old, key)!r} vs {getattr(manifest, key)!r}); use a new --out")
        # Resuming may drop layers (e.g. keep only the layer chosen after a comparison), never add one.
        if not set(manifest.hooks) <= set(old.hooks):
            raise SaesteerError(f"{out} holds hooks {old.hooks}; a resumed run can only keep a subset of them, "
                                "so use a new --out for other layers")
        manifest.shards = old.shards
        if old.complete and old.n_tokens >= config.max_tokens:
            return old
    docs = corpus_documents(config.dataset, seed=config.seed)
    per_context = config.context_length - 1
    contexts_per_shard = max(config.batch_size, round(config.shard_tokens / per_context / config.batch_size) * config.batch_size)
    done_contexts = sum(s["contexts"] for s in manifest.shards)
    stream = contexts(token_stream(lm, docs), config.context_length)
    for _ in range(done_contexts):
        next(stream, None)
    store_dtype = STORE_DTYPES[config.dtype]
    model = base_model(lm.model)
    layers = [p.layer for p in points]
    bar = tqdm(total=config.max_tokens, initial=min(manifest.n_tokens, config.max_tokens), unit="tok",
               unit_scale=True, desc=f"harvest {','.join(map(str, layers))}", disable=not progress)
    started, fresh_tokens = time.time(), 0
    exhausted = False
    while manifest.n_tokens < config.max_tokens and not exhausted:
        remaining = config.max_tokens - manifest.n_tokens
        want = min(contexts_per_shard, math.ceil(remaining / per_context))
        chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        ids_chunks: list[torch.Tensor] = []
        n_contexts = 0
        while n_contexts < want:
            batch = [c for _, c in zip(range(min(config.batch_size, want - n_contexts)), stream)]
            if not batch:
                exhausted = True
                break
            input_ids = torch.tensor(batch, device=lm.device)
            with torch.inference_mode(), capture(model, layers) as acts:
                run_until_stopped(lambda: model(input_ids=input_ids, use_cache=False))
            for layer in layers:
                chunks[layer].append(acts[layer][:, 1:].reshape(-1, lm.d_model).to("cpu", store_dtype))
            ids_chunks.append(input_ids[:, 1:].reshape(-1).to("cpu", torch.int32))
            n_contexts += len(batch)
            fresh_tokens += len(batch) * per_context
            bar.update(len(batch) * per_context)
            bar.set_postfix(tok_s=f"{fresh_tokens / (time.time() - started):.0f}")
        if n_contexts == 0:
            break
        tensors = {points[i].name: torch.cat(chunks[layer]) for i, layer in enumerate(layers)}
        tensors["token_ids"] = torch.cat(ids_chunks)
        index = len(manifest.shards)
        _check_finite(tensors, index)
        name = f"shard_{index:05d}.safetensors"
        with atomic_path(out / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        manifest.shards.append({"file": name, "tokens": int(tensors["token_ids"].numel()),
                                "contexts": n_contexts})
        manifest.tokens_per_second = round(fresh_tokens / (time.time() - started), 1)
        write_json(out / MANIFEST, manifest.to_dict())
    bar.close()
    if manifest.n_tokens == 0:
        raise SaesteerError(f"dataset {config.dataset!r} gave no complete {config.context_length}-token context; "
                            "use more data or a smaller --context-length")
    manifest.complete = True
    write_json(out / MANIFEST, manifest.to_dict())
    if exhausted and manifest.n_tokens < config.max_tokens:
        tqdm.write(f"note: dataset {config.dataset} ran out after {manifest.n_tokens:,} tokens "
                   f"(asked for {config.max_tokens:,})")
    return manifest


def _check_finite(tensors: dict[str, torch.Tensor], shard: int) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            row = int((~torch.isfinite(t)).any(dim=-1).nonzero()[0])
            raise SaesteerError(f"non-finite activation at hook {key}, shard {shard}, row {row} "
                                "(float16 overflow? rerun with --dtype float32)")


# --- reading back ----------------------------------------------------------------------------

class ActivationStore:
    """Shards of one hook of a harvest folder."""

    def __init__(self, folder: str | Path, hook: int | str | None = None):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.hook = self._resolve_hook(hook)
        self.shards = [s["file"] for s in self.manifest.shards]
        if not self.shards:
            raise SaesteerError(f"{self.folder} has no complete shard yet")
        # A missing shard would otherwise count as held out (or as training data) and never be read.
        missing = [name for name in self.shards if not (self.folder / name).is_file()]
        if missing:
            raise SaesteerError(f"{self.folder} lists {len(missing)} shard(s) that are missing ({missing[0]}, ...); "
                                "restore them, or rerun saesteer harvest into a new --out")

    def _resolve_hook(self, hook: int | str | None) -> str:
        m = self.manifest
        if hook is None:
            if len(m.hooks) > 1:
                raise SaesteerError(f"{self.folder} holds layers {', '.join(map(str, m.layers))}; choose one with --layer")
            return m.hooks[0]
        for name, layer in zip(m.hooks, m.layers):
            if str(hook) in (name, str(layer)) or str(hook).endswith(f".{layer}"):
                return name
        raise SaesteerError(f"{self.folder} has no activations for layer {hook}; it holds {', '.join(map(str, m.layers))}")

    @property
    def layer(self) -> int:
        return self.manifest.layers[self.manifest.hooks.index(self.hook)]

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    def load_shard(self, index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        path = self.folder / self.shards[index]
        try:
            acts = load_file(str(path))[self.hook]
        except (SafetensorError, OSError, KeyError) as e:
            raise SaesteerError(f"shard {path} is corrupt or truncated ({e}); delete it and rerun "
                                "saesteer harvest to rewrite it") from e
        self._check_rows(index, acts)
        return acts.to(dtype)

    def _check_rows(self, index: int, acts: torch.Tensor) -> None:
        path = self.folder / self.shards[index]
        if acts.ndim != 2 or acts.shape[-1] != self.d_model:
            raise SaesteerError(f"shard {path} has shape {list(acts.shape)}, manifest says width {self.d_model}")
        rows = self.manifest.shards[index]["tokens"]
        if len(acts) != rows:
            raise SaesteerError(f"shard {path} holds {len(acts)} tokens but the manifest counts {rows}; "
                                "the manifest and shards are out of step: rerun saesteer harvest into a new --out")

    def split(self, holdout_tokens: int) -> tuple[list[int], list[int]]:
        """(train shards, held-out shards): the last shards until `holdout_tokens` are covered."""
        sizes = [s["tokens"] for s in self.manifest.shards]
        held: list[int] = []
        total = 0
        for i in reversed(range(len(sizes))):
            if total >= holdout_tokens or len(held) == len(sizes) - 1:
                break
            held.insert(0, i)
            total += sizes[i]
        train = [i for i in range(len(sizes)) if i not in held]
        return train, held

    def batches(self, shard_ids: list[int], batch_tokens: int, *, seed: int = 0, buffer_shards: int = 8,
                epochs: int | None = 1, skip_batches: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled [batch_tokens, d] float32 batches: shard order and rows within a buffer of
        `buffer_shards` shards are permuted with `seed`. Deterministic, so a resumed run can
        skip the batches it has already seen."""
        epoch = 0
        produced = 0
        while epochs is None or epoch < epochs:
            g = torch.Generator().manual_seed(seed * 7919 + epoch)
            order = [shard_ids[i] for i in torch.randperm(len(shard_ids), generator=g).tolist()]
            for start in range(0, len(order), buffer_shards):
                group = order[start:start + buffer_shards]
                n_rows = sum(self.manifest.shards[i]["tokens"] for i in group)
                perm = torch.randperm(n_rows, generator=g)  # drawn even when skipped: keeps `g` in step
                n_batches = n_rows // batch_tokens
                if produced + n_batches <= skip_batches:
                    produced += n_batches
                    continue
                buf = torch.cat([self.load_shard(i) for i in group])[perm]
                for b in range(n_batches):
                    if produced >= skip_batches:
                        yield buf[b * batch_tokens:(b + 1) * batch_tokens]
                    produced += 1
            epoch += 1

    def all(self, shard_ids: list[int], max_tokens: int | None = None) -> torch.Tensor:
        out, total = [], 0
        for i in shard_ids:
            acts = self.load_shard(i)
            out.append(acts)
            total += len(acts)
            if max_tokens is not None and total >= max_tokens:
                break
        acts = torch.cat(out)
        return acts[:max_tokens] if max_tokens is not None else acts
