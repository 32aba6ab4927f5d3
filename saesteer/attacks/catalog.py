"""Attacks by name: `--attacks base64,aim,prefill,manyshot-16`, families (`encoding`), `all`, template
files, and PyRIT's templates and converters when the `pyrit` extra is installed."""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path

from saesteer.attacks.jailbreaks import BUILTIN, PLAIN
from saesteer.attacks.manyshot import DEFAULT_SHOTS, manyshot_attack, parse_manyshot
from saesteer.attacks.templates import (Attack, file_attack, pyrit_converter_attack, pyrit_template_attack,
                                        pyrit_templates)
from saesteer.errors import SaesteerError

ALL: list[Attack] = [*BUILTIN, *(manyshot_attack(n) for n in DEFAULT_SHOTS)]
"""Every built-in attack (what `--attacks all` runs); `none`, the plain request, always runs too."""
BY_NAME = {a.name: a for a in [PLAIN, *ALL]}
FAMILIES = sorted({a.family for a in ALL})
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".txt", ".md", ".j2")
GARAK_NOTE = ("garak attacks do not run inside saesteer: garak 0.17.1 pins transformers<5.20 and openai<3, "
              "which clash with saesteer's; run garak in its own environment against `saesteer serve` "
              "(benchmarks/redteam_garak.py, docs/serving.md)")


def resolve_attacks(spec: str) -> list[Attack]:
    """The attacks a comma-separated `--attacks` value names, in order, without repeats.

    Each item is `all`, a family (`encoding`, `jailbroken`, `roleplay`, `prefill`, `manyshot`), a
    built-in name, `manyshot-N`, a template file (PyRIT's YAML schema or text with `{request}`),
    `pyrit:TEMPLATE` or `pyrit-converter:CLASS`. The plain request (`none`) is not in the list;
    the evaluation always adds it as the baseline.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise SaesteerError(f"--attacks names no attack; use all, a family ({', '.join(FAMILIES)}) or names "
                            "from `saesteer eval attacks --list`")
    out: dict[str, Attack] = {}
    for item in items:
        for attack in _resolve_one(item):
            if attack.name in out and out[attack.name] is not attack:
                raise SaesteerError(f"two attacks are named {attack.name!r}; rename the template file")
            out[attack.name] = attack
    out.pop("none", None)
    return list(out.values())


def _resolve_one(item: str) -> list[Attack]:
    if item == "all":
        return list(ALL)
    if item in BY_NAME:                      # `prefill` is an attack before it is a family
        return [BY_NAME[item]]
    if item != item.lower() and (item.lower() in BY_NAME or item.lower() in FAMILIES):   # ROT13, Base64
        return _resolve_one(item.lower())
    if item in FAMILIES:
        return [a for a in ALL if a.family == item]
    shots = parse_manyshot(item)
    if shots is not None:
        return [shots]
    kind, sep, rest = item.partition(":")
    if sep and kind == "pyrit":
        return [pyrit_template_attack(rest)]
    if sep and kind == "pyrit-converter":
        return [pyrit_converter_attack(rest)]
    if sep and kind == "garak":
        raise SaesteerError(GARAK_NOTE)
    path = Path(item).expanduser()
    if path.is_file():
        attack = file_attack(path)
        if attack.name in BY_NAME:
            raise SaesteerError(f"template file {path} has the name of the built-in attack {attack.name!r}; "
                                "rename the file")
        return [attack]
    if path.suffix.lower() in TEMPLATE_SUFFIXES or "/" in item:
        raise SaesteerError(f"attack template file {path} not found")
    near = get_close_matches(item, [*BY_NAME, *FAMILIES, "all"], n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise SaesteerError(f"unknown attack {item!r}; {hint}valid: all, {', '.join(FAMILIES)}, "
                        f"{', '.join(a.name for a in ALL)}, manyshot-N, pyrit:TEMPLATE, a template file")


def describe(attack: Attack) -> dict[str, str]:
    return {"name": attack.name, "family": attack.family, "description": attack.description,
            "source": attack.source}


def listing(pyrit: bool = False) -> list[dict[str, str]]:
    """What `saesteer eval attacks --list` prints: the built-in attacks (and PyRIT's templates)."""
    rows = [describe(a) for a in [PLAIN, *ALL]]
    if pyrit:
        rows += [{"name": f"pyrit:{name}", "family": "template", "description": "PyRIT jailbreak template",
                  "source": f"PyRIT {path.name}"} for name, path in pyrit_templates().items()]
    return rows
