"""What a single-turn attack is, and attacks made from templates: built in, from a file, or from
PyRIT's jailbreak templates (the optional `pyrit` extra).

An attack turns a harmful request into the messages sent to the target: one user turn (a template
around the request, the request encoded), fabricated earlier turns (many-shot), and optionally the
start of the assistant's answer (prefilling). `decode` reads text in the attack's encoding back as
plain text; it is applied to the target's answer before judging.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from saesteer.errors import SaesteerError
from saesteer.models import Conversation

SLOT = "{request}"
"""Where the request goes in a template (PyRIT's `{{ prompt }}` is read as the same slot)."""
_PYRIT_SLOT = re.compile(r"\{\{\s*prompt\s*\}\}")


@dataclass(frozen=True)
class Attack:
    name: str
    family: str
    """encoding, jailbroken (Wei et al. 2023), roleplay, prefill, manyshot, template or plain."""
    source: str
    """Where the attack comes from: the paper, and the library file it mirrors."""
    description: str
    build: Callable[[str], Conversation]
    """request -> the messages sent; the last one is the user turn that carries the request."""
    encode: Callable[[str], str] | None = None
    """The converter applied to the request inside the template (None: sent as written)."""
    decode: Callable[[str], str] | None = None
    """Text in the attack's encoding -> plain text; also applied to the target's answer."""
    prefill: str | None = None
    """The start of the assistant's turn, written for the model (prefilling attacks)."""
    shots: int | None = None
    """Fabricated earlier exchanges (many-shot attacks)."""

    def payload(self, request: str) -> str:
        return self.encode(request) if self.encode is not None else request

    def messages(self, request: str) -> Conversation:
        """The conversation sent for `request`; a converter failure is a SaesteerError naming the attack."""
        try:
            return self.build(request)
        except SaesteerError:
            raise
        except Exception as e:  # converters from libraries raise anything (ValueError on non-ASCII, ...)
            raise SaesteerError(f"attack {self.name!r} could not convert the request "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'})") from e


def fill(template: str, payload: str) -> str:
    """The template with its slot replaced (plain replacement: templates hold braces of their own)."""
    return template.replace(SLOT, payload)


def template_attack(name: str, family: str, source: str, template: str, *, description: str = "",
                    encode: Callable[[str], str] | None = None, decode: Callable[[str], str] | None = None,
                    prefill: str | None = None) -> Attack:
    """An attack that sends `template` with the (encoded) request in its `{request}` slot."""
    check_slot(name, template)

    def build(request: str) -> Conversation:
        return [{"role": "user", "content": fill(template, encode(request) if encode else request)}]

    return Attack(name, family, source, description or first_line(template), build, encode, decode, prefill)


def check_slot(name: str, template: str) -> None:
    if SLOT not in template:
        raise SaesteerError(f"template {name!r} has no slot for the request; put {SLOT} (or PyRIT's "
                            "{{ prompt }}) where the request goes")


def first_line(text: str, width: int = 70) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 3] + "..."


# --- templates from files ------------------------------------------------------------------------

def read_template(path: Path) -> tuple[str, str, str]:
    """(template with a `{request}` slot, description, source) from a YAML file in PyRIT's
    SeedPrompt schema (`value`, `name`, `source`) or a plain text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SaesteerError(f"attack template {path} is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise SaesteerError(f"cannot read attack template {path}: {e.strerror}") from e
    if path.suffix.lower() not in (".yaml", ".yml"):
        return _unfilled_check(path, _PYRIT_SLOT.sub(SLOT, text)), first_line(text), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SaesteerError(f"attack template {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        raise SaesteerError(f"attack template {path} has no `value` text (PyRIT's template schema: "
                            "name, source, value with {{ prompt }})")
    params = data.get("parameters") or ["prompt"]
    if isinstance(params, list) and any(p != "prompt" for p in params):
        raise SaesteerError(f"attack template {path} takes parameters {params}; only `prompt` (the request) "
                            "can be filled in")
    value = _unfilled_check(path, _PYRIT_SLOT.sub(SLOT, data["value"]).strip())
    source = " ".join(str(data.get(k)) for k in ("source", "name") if data.get(k)) or str(path)
    return value, str(data.get("description") or data.get("name") or first_line(value)), source


_JINJA_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _unfilled_check(path: Path, template: str) -> str:
    """A `{{ name }}` slot other than the request's would reach the model as literal text."""
    other = _JINJA_SLOT.search(template)
    if other:
        raise SaesteerError(f"attack template {path} has a slot {other.group(0)} that saesteer cannot fill (only "
                            "the request's {{ prompt }} or {request}); write that text into the template")
    return template


def file_attack(path: Path, family: str = "template") -> Attack:
    """An attack from a template file: `attacks/my_template.yaml` (PyRIT schema) or `.txt`."""
    template, description, source = read_template(path)
    return template_attack(path.stem, family, source, template, description=first_line(description))


# --- PyRIT (optional extra) ----------------------------------------------------------------------

PYRIT_HINT = "pip install 'saesteer[pyrit]' (or: pip install pyrit)"


def pyrit_folder() -> Path:
    """PyRIT's package folder, found without importing it (its import pulls in much)."""
    spec = importlib.util.find_spec("pyrit")
    if spec is None or not spec.submodule_search_locations:
        raise SaesteerError(f"PyRIT attacks need the PyRIT library, which is not installed; {PYRIT_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def pyrit_templates() -> dict[str, Path]:
    """PyRIT's single-prompt jailbreak templates by name (file stem; multi-parameter ones left out)."""
    root = pyrit_folder() / "datasets" / "jailbreak" / "templates"
    if not root.is_dir():
        raise SaesteerError(f"this PyRIT has no jailbreak templates at {root}; {PYRIT_HINT}")
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))
            if "multi_parameter" not in p.parts}


def pyrit_template_attack(name: str) -> Attack:
    templates = pyrit_templates()
    if name not in templates:
        from difflib import get_close_matches

        near = get_close_matches(name, list(templates), n=3)
        raise SaesteerError(f"PyRIT has no jailbreak template {name!r}"
                            + (f"; did you mean {', '.join('pyrit:' + n for n in near)}?" if near else
                               f"; {len(templates)} exist (saesteer eval attacks --list --pyrit)"))
    template, description, source = read_template(templates[name])
    return template_attack(f"pyrit:{name}", "template", f"PyRIT jailbreak template {name}.yaml ({source})",
                           template, description=first_line(description))


def pyrit_converter_attack(class_name: str) -> Attack:
    """A PyRIT prompt converter (`pyrit-converter:MorseConverter`) applied to the request, sent as is."""
    pyrit_folder()
    import asyncio

    import pyrit.converter as converters

    cls = getattr(converters, class_name, None)
    if cls is None or not isinstance(cls, type):
        from difflib import get_close_matches

        names = [n for n in dir(converters) if n.endswith("Converter")]
        near = get_close_matches(class_name, names, n=3)
        raise SaesteerError(f"PyRIT has no converter {class_name!r}"
                            + (f"; did you mean {', '.join(near)}?" if near else ""))
    try:
        converter = cls()
    except TypeError as e:
        raise SaesteerError(f"PyRIT converter {class_name} needs arguments (an LLM target?); only converters "
                            f"that work without arguments can be named here ({e})") from e

    def encode(text: str) -> str:
        return asyncio.run(converter.convert_async(prompt=text, input_type="text")).output_text

    return Attack(f"pyrit-converter:{class_name}", "encoding", f"PyRIT pyrit/converter ({class_name})",
                  first_line((cls.__doc__ or class_name).strip()),
                  lambda r: [{"role": "user", "content": encode(r)}], encode)
