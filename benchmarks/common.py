"""Shared helpers for the side-by-side benchmarks: alternate A and B, report medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def alternate(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case in turn `repeats` times (after `warmup` untimed rounds); seconds per run."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn)[0])
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def header(title: str) -> None:
    import platform

    import torch

    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{platform.processor() or platform.machine()}")


def hf_generate(lm, prompt: str, max_new_tokens: int):
    """The baseline: transformers' own `model.generate` on one chat prompt, greedy; new token ids."""
    import torch

    ids = lm.tokenizer(lm.chat(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=lm.stop_token_ids, pad_token_id=lm.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:]
