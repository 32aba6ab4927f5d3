"""Load SAEs in SAELens or sparsify layout, and save ours in SAELens layout.

SAELens folder: `cfg.json` + `sae_weights.safetensors` (`W_enc` [d_in, d_sae], `W_dec`
[d_sae, d_in], `b_enc`, `b_dec`, `threshold` for JumpReLU); v6 configs keep the model and hook
in a nested `metadata` object, older ones at the top level.
sparsify folder (one per hook point, named after it): `cfg.json` + `sae.safetensors`
(`encoder.weight` [d_sae, d_in], `encoder.bias`, `W_dec`, `b_dec`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saesteer.errors import SaesteerError
from saesteer.files import atomic_path, ensure_dir, read_json, write_json
from saesteer.sae.base import SAE, JumpReLUSAE, ReluSAE
from saesteer.sae.topk import TopKSAE

CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# SAELens reads a config as its v6 layout (nested metadata) only when it names a v6 version.
SAELENS_LAYOUT_VERSION = "6.0.0"
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
               torch.float64: "float64"}
METADATA_KEYS = ("model_name", "model_id", "revision", "hook_name", "hf_hook_name", "layer",
                 "context_size", "dataset", "dataset_path", "prepend_bos", "hook_head_index")


def save_sae(sae: SAE, out_dir: str | Path) -> Path:
    """Write `sae` to `out_dir` in SAELens layout (each file atomically); returns the folder."""
    out = ensure_dir(out_dir)
    arch = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}[sae.architecture]
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": DTYPE_NAMES.get(sae.dtype, "float32"), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if sae.k is not None:
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    meta = {key: None for key in ("model_name", "hook_name", "hf_hook_name")}
    meta.update(sae.metadata)
    meta.setdefault("sae_lens_version", SAELENS_LAYOUT_VERSION)
    cfg["metadata"] = meta
    with atomic_path(out / SAELENS_WEIGHTS) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in sae.state_tensors().items()}, str(tmp))
    write_json(out / CFG, cfg)
    return out


def load_sae(path: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> SAE:
    """Load an SAE folder (SAELens or sparsify layout) or its weights file."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if not path.is_dir():
        raise SaesteerError(f"SAE folder {path} does not exist")
    if (path / SAELENS_WEIGHTS).exists():
        sae = _load_saelens(path)
    elif (path / SPARSIFY_WEIGHTS).exists():
        sae = _load_sparsify(path)
    else:
        subs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / CFG).exists())
        if subs:
            raise SaesteerError(f"{path} holds several SAEs ({', '.join(subs[:8])}); pass one of those folders")
        raise SaesteerError(f"{path} is not an SAE folder: expected {CFG} with {SAELENS_WEIGHTS} "
                            f"(SAELens) or {SPARSIFY_WEIGHTS} (sparsify)")
    sae.source_path = path
    if dtype is not None and dtype != sae.dtype:
        sae.to(dtype)
    return sae.to(device).requires_grad_(False)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise SaesteerError(f"SAE weights {path} are missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises assorted errors on damaged files
        raise SaesteerError(f"SAE weights {path} are corrupt or truncated ({str(e).splitlines()[0][:120]}); "
                            "re-download or retrain them") from e


def _read_cfg(folder: Path) -> dict[str, Any]:
    cfg = read_json(folder / CFG)
    if not isinstance(cfg, dict):
        raise SaesteerError(f"{folder / CFG} is not an SAE config (a JSON object)")
    return cfg


def _take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        raise SaesteerError(f"{where} has no tensor {name!r} (has {', '.join(sorted(tensors))})")
    if tuple(t.shape) != shape:
        raise SaesteerError(f"{where}: {name} has shape {list(t.shape)}, config says {list(shape)}; "
                            "the weights and cfg.json belong to different SAEs")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise SaesteerError(f"{where}: {name} holds NaN or inf values; retrain or re-download the SAE")
    return t


def _size(cfg: dict[str, Any], key: str, where: Path) -> int:
    """A positive whole number from the config (checked before anything is allocated)."""
    value = cfg.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SaesteerError(f"{where}: {key} must be a whole number, got {value!r}")
    if value < 1:
        raise SaesteerError(f"{where}: {key} = {value} must be positive")
    return value


def _check_sizes(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    """The file's tensors have the config's shapes: an absurd d_in / d_sae fails here, not in the allocator."""
    for name, shape in shapes.items():
        if name in tensors:
            _take(tensors, name, shape, where)


def layer_of(hook_name: str | None) -> int | None:
    """Block index of a residual-stream hook name (TransformerLens or HF style)."""
    if not hook_name:
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name) or \
        re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)", hook_name)
    return int(m.group(1)) if m else None


def _fill_metadata(meta: dict[str, Any], where: Path | str = "SAE config") -> dict[str, Any]:
    hook = meta.get("hook_name")
    layer = meta.get("layer")
    if isinstance(layer, str) and layer.strip().isdigit():
        layer = int(layer)
    elif isinstance(layer, float) and layer.is_integer():
        layer = int(layer)
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise SaesteerError(f"{where}: the SAE's layer must be a block index (a whole number >= 0), got {layer!r}; "
                            "fix `layer` in its metadata")
    if layer is None:
        layer = layer_of(hook) if layer_of(hook) is not None else layer_of(meta.get("hf_hook_name"))
    meta["layer"] = layer
    if hook and not hook.startswith("blocks.") and layer is not None and layer_of(hook) is not None:
        meta.setdefault("hf_hook_name", hook)
        meta["hook_name"] = f"blocks.{layer}.hook_resid_post"
    meta.setdefault("hf_hook_name", None)
    meta.setdefault("model_id", meta.get("model_name"))
    return meta


def _load_saelens(folder: Path) -> SAE:
    cfg = _read_cfg(folder)
    where = folder / CFG
    if "d_in" not in cfg or "d_sae" not in cfg:
        raise SaesteerError(f"{where} lacks d_in/d_sae; is this an SAE config?")
    d_in, d_sae = _size(cfg, "d_in", where), _size(cfg, "d_sae", where)
    if isinstance(cfg.get("metadata"), dict):
        meta = dict(cfg["metadata"])
    else:  # pre-6.0 SAELens: model and hook at the top level
        meta = {k: cfg.get(k) for k in METADATA_KEYS if k in cfg}
        meta.setdefault("hook_name", cfg.get("hook_point"))
        if cfg.get("hook_layer") is not None:
            meta["layer"] = cfg["hook_layer"]
    arch = cfg.get("architecture") or "standard"
    if arch == "standard" and (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk":
        arch = "topk"
    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm not in ("none", False, "expected_average_only_in"):
        raise SaesteerError(f"{where}: normalize_activations={norm!r} is not supported (only none)")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise SaesteerError(f"{where}: reshape_activations={cfg['reshape_activations']!r} (attention heads) is not supported")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "float64": torch.float64}.get(str(cfg.get("dtype", "float32")).removeprefix("torch."), torch.float32)
    common = {"apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
              "metadata": _fill_metadata(meta, where), "dtype": dtype}
    tensors = _read_weights(folder / SAELENS_WEIGHTS)
    wpath = folder / SAELENS_WEIGHTS
    _check_sizes(tensors, {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}, wpath)
    sae: SAE
    if arch == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise SaesteerError(f"{where}: a topk SAE needs k")
        k = _size({"k": k}, "k", where)
        if int(k) > d_sae:
            raise SaesteerError(f"{where}: k = {k} is larger than the dictionary ({d_sae} latents)")
        sae = TopKSAE(d_in, d_sae, int(k), **common)
    elif arch in ("standard", "relu"):
        sae = ReluSAE(d_in, d_sae, **common)
    elif arch == "jumprelu":
        sae = JumpReLUSAE(d_in, d_sae, **common)
    else:
        raise SaesteerError(f"{where}: architecture {arch!r} is not supported (topk, standard/relu, jumprelu)")
    with torch.no_grad():
        sae.W_enc.copy_(_take(tensors, "W_enc", (d_in, d_sae), wpath))
        sae.W_dec.copy_(_take(tensors, "W_dec", (d_sae, d_in), wpath))
        sae.b_enc.copy_(_take(tensors, "b_enc", (d_sae,), wpath))
        sae.b_dec.copy_(_take(tensors, "b_dec", (d_in,), wpath))
        if isinstance(sae, JumpReLUSAE):
            if "threshold" not in tensors and "log_threshold" in tensors:
                tensors["threshold"] = tensors["log_threshold"].exp()
            sae.threshold.copy_(_take(tensors, "threshold", (d_sae,), wpath))
        if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
            # Fold the decoder norms in: same codes, unit-norm rows.
            norm = sae.W_dec.norm(dim=1).clamp_min(1e-8)
            sae.W_enc.mul_(norm)
            sae.b_enc.mul_(norm)
            sae.W_dec.div_(norm[:, None])
        if "finetuning_scaling_factor" in tensors or "scaling_factor" in tensors:
            s = tensors.get("finetuning_scaling_factor", tensors.get("scaling_factor"))
            if s is not None and not torch.allclose(s, torch.ones_like(s)):
                sae.W_dec.mul_(s.to(sae.dtype)[:, None])
    sae.weights_file = wpath
    return sae


def _load_sparsify(folder: Path) -> SAE:
    cfg = _read_cfg(folder)
    where = folder / CFG
    if cfg.get("activation", "topk") != "topk":
        raise SaesteerError(f"{where}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise SaesteerError(f"{where}: sparsify transcoders and skip connections are not supported")
    for key in ("d_in", "k"):
        if key not in cfg:
            raise SaesteerError(f"{where} is not a sparsify config (no {key})")
    d_in, k = _size(cfg, "d_in", where), _size(cfg, "k", where)
    d_sae = (_size(cfg, "num_latents", where) if cfg.get("num_latents")
             else d_in * _size(cfg, "expansion_factor", where))
    if k > d_sae:
        raise SaesteerError(f"{where}: k = {k} is larger than the dictionary ({d_sae} latents)")
    wpath = folder / SPARSIFY_WEIGHTS
    tensors = _read_weights(wpath)
    _check_sizes(tensors, {"W_dec": (d_sae, d_in), "encoder.bias": (d_sae,), "b_dec": (d_in,)}, wpath)
    enc = _take(tensors, "encoder.weight", (d_sae, d_in), wpath)
    meta: dict[str, Any] = {"hook_name": folder.name, "format": "sparsify"}
    run_cfg = folder.parent / "config.json"
    if run_cfg.exists():
        run = read_json(run_cfg)
        model = run.get("model") if isinstance(run, dict) else None
        if model:
            meta["model_name"] = model
    sae = TopKSAE(d_in, d_sae, k, dtype=enc.dtype, metadata=_fill_metadata(meta, where))
    with torch.no_grad():
        sae.W_enc.copy_(enc.t())
        sae.b_enc.copy_(_take(tensors, "encoder.bias", (d_sae,), wpath))
        sae.W_dec.copy_(_take(tensors, "W_dec", (d_sae, d_in), wpath))
        sae.b_dec.copy_(_take(tensors, "b_dec", (d_in,), wpath))
    sae.weights_file = wpath
    return sae
