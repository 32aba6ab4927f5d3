"""Small statistics helpers: Wilson intervals for rates."""

from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well behaved at 0%, 100% and small n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, n: int) -> dict[str, float | int | None]:
    """{rate, n, k, ci95}; the rate of no trials is None (JSON null), not NaN, which JSON has not."""
    lo, hi = wilson(successes, n)
    return {"rate": successes / n if n else None, "n": n, "k": successes, "ci95": [lo, hi]}


def describe(r: dict) -> str:
    """`rate`'s dict as a line: "12.5% [3.5%, 36.0%] (n=16)", or "n=0"."""
    if not r["n"]:
        return "n=0"
    return f"{r['rate']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] (n={r['n']})"
