"""Hook points: the residual stream after decoder block L, by index or HF module path.

`hook_point(model, 15)`, `hook_point(model, "model.layers.15")`, `"layers.15"` (sparsify) and
`"blocks.15.hook_resid_post"` (TransformerLens / SAELens) all name the same tensor: the output
of decoder block 15, which is `hidden_states[16]` of an HF forward with
`output_hidden_states=True`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saesteer.errors import SaesteerError

# Where each family keeps its decoder blocks (checked in this order).
BLOCK_LIST_PATHS = (
    "model.layers",                     # Llama, Mistral, Qwen2, Phi-3, Gemma 2/3 (CausalLM)
    "model.language_model.layers",      # Gemma 3 multimodal wrappers
    "transformer.h",                    # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",                  # GPT-NeoX, Pythia
    "model.decoder.layers",             # OPT
    "transformer.blocks",               # MPT
    "layers",                           # base models without the LM head
)


@dataclass(frozen=True)
class HookPoint:
    """The output of one decoder block."""

    layer: int
    name: str
    """HF module path, e.g. `model.layers.15`."""
    module: nn.Module = None  # type: ignore[assignment]

    @property
    def tl_name(self) -> str:
        """TransformerLens / SAELens name of the same tensor."""
        return f"blocks.{self.layer}.hook_resid_post"


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (path, ModuleList) of the decoder blocks of an HF causal LM."""
    for path in BLOCK_LIST_PATHS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    # Fallback: the longest ModuleList in the model.
    best: tuple[str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (path, module)
    if best is None:
        raise SaesteerError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best


_LAYER_PATTERNS = (
    re.compile(r"^blocks\.(\d+)\.hook_resid_post$"),
    re.compile(r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)$"),
)


def hook_point(model: nn.Module, where: int | str) -> HookPoint:
    """Resolve a layer index or module path to the residual stream after that block."""
    path, blocks = block_list(model)
    n = len(blocks)
    layer: int | None = None
    if isinstance(where, int) or (isinstance(where, str) and where.lstrip("-").isdigit()):
        layer = int(where)
        if layer < 0:   # counting from the end, as Python indexes
            layer += n
    else:
        for pattern in _LAYER_PATTERNS:
            m = pattern.match(where)
            if m:
                layer = int(m.group(1))
                break
        if layer is None:
            raise SaesteerError(f"unknown hook {where!r}; use a layer index or a path like "
                                f"{path}.{n // 2} (residual stream after that block)")
        if where.count(".") > 1 and not where.startswith("blocks.") and not where.startswith(path + "."):
            raise SaesteerError(f"hook {where!r} is not a module of this model; its blocks are {path}.0-{n - 1}")
    if not 0 <= layer < n:
        raise SaesteerError(f"layer {where} is out of range: this model has {n} blocks (0-{n - 1}, "
                            f"or -{n} to -1 counting from the end)")
    return HookPoint(layer=layer, name=f"{path}.{layer}", module=blocks[layer])


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_output(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


class StopForward(Exception):
    """Raised by a hook to end a forward pass after the deepest layer that is needed."""


@contextlib.contextmanager
def forward_hooks(hooks: list[tuple[nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Register forward hooks and always remove them, also when the body raises."""
    handles = []
    try:
        for module, fn in hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(model: nn.Module, layers: list[int | str], *, stop: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the residual stream after each listed block during a forward pass.

    With `stop=True` the forward ends (`StopForward`) after the deepest listed block; run the
    model inside `run_until_stopped`.
    """
    points = [hook_point(model, w) for w in layers]
    deepest = max(p.layer for p in points)
    captured: dict[int, torch.Tensor] = {}

    def make(point: HookPoint) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[point.layer] = output_tensor(output).detach()
            if stop and point.layer == deepest:
                raise StopForward

        return hook

    with forward_hooks([(p.module, make(p)) for p in points]):
        yield captured


def run_until_stopped(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except StopForward:
        pass


def base_model(model: nn.Module) -> nn.Module:
    """The transformer without the LM head (skips the unembedding when only activations are needed)."""
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else model
