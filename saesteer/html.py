"""Small HTML helpers shared by the discovery pages and the report (no template engine needed)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.45}
h1,h2,h3{font-weight:600} table{border-collapse:collapse;margin:.6rem 0 1.2rem} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;font-size:.9rem}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} .muted{color:#777;font-size:.85rem}
.ctx{font-family:ui-monospace,Menlo,monospace;font-size:.8rem;white-space:pre-wrap;border-left:3px solid #eee;padding:.2rem .6rem;margin:.3rem 0}
.tok{border-radius:2px} .card{border:1px solid #e3e3e3;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
img{max-width:100%} code{background:#f5f5f5;padding:0 .2rem;border-radius:3px}
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Raw(str):
    """A string that is already HTML (not escaped by `table`)."""


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def highlight(tokens: Sequence[str], values: Sequence[float], vmax: float | None = None) -> str:
    """Tokens with a background whose intensity follows each token's activation."""
    top = vmax if vmax else max([v for v in values if v > 0], default=1.0)
    parts = []
    for tok, v in zip(tokens, values):
        alpha = max(0.0, min(1.0, v / top)) if top > 0 else 0.0
        title = f"{v:.2f}"
        parts.append(f"<span class='tok' title='{title}' style='background:rgba(255,120,0,{alpha:.2f})'>{esc(tok)}</span>")
    return "".join(parts)


def embed_png(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img src='data:image/png;base64,{data}' alt='{esc(Path(path).stem)}'>"
