"""The attacker LLM's side of a multi-turn attack: its PyRIT system prompt, and reading its replies.

PyRIT's attacker prompts are read at run time from the data directory or an installed `pyrit`
(never copied here). The attacker answers with JSON whose `next_message` goes to the target;
weak attackers' broken JSON or free text is salvaged and counted.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from saesteer.attacks.base import json_objects
from saesteer.errors import SaesteerError
from saesteer.files import sha256_json

DEFAULT_ATTACKER_PROMPT = "crescendo_variant_1"
PROMPT_FOLDERS = ("executors/crescendo", "executors/red_teaming", "orchestrators/crescendo")
KNOWN_PARAMETERS = ("objective", "max_turns", "conversation_context")


DEFAULT_ATTACKER_PROMPT = "crescendo_variant_1"
PROMPT_FOLDERS = ("executors/crescendo", "executors/red_teaming", "orchestrators/crescendo")
KNOWN_PARAMETERS = ("objective", "max_turns", "conversation_context")


@dataclass
class AttackerPrompt:
    """A PyRIT attacker system prompt: a Jinja2 template in PyRIT's seed-prompt YAML schema."""

    name: str
    path: Path
    template: str
    parameters: list[str]
    sha256: str

    def render(self, objective: str, max_turns: int, conversation_context: str = "") -> str:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return env.from_string(self.template).render(objective=objective, max_turns=max_turns,
                                                         conversation_context=conversation_context)
        except jinja2.TemplateError as e:
            raise SaesteerError(f"attacker prompt {self.path} does not render: {e}") from e

    def placeholders(self) -> set[str]:
        """The example `next_message` values in the prompt's JSON format (weak attackers copy them)."""
        return {_norm(m) for m in re.findall(r'"next_message"\s*:\s*"([^"]+)"', self.template)}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def attacker_prompt_candidates(name: str) -> list[Path]:
    """Where a named PyRIT prompt is looked for: the data directory, then an installed `pyrit`."""
    from saesteer.data.sources import data_dir

    stem = name.removesuffix(".yaml")
    places = []
    root = data_dir()
    if root is not None:
        places += [root / "pyrit_crescendo" / folder / f"{stem}.yaml" for folder in PROMPT_FOLDERS]
    found = importlib.util.find_spec("pyrit")
    if found is not None and found.submodule_search_locations:
        package = Path(list(found.submodule_search_locations)[0])
        places += [package / "datasets" / folder / f"{stem}.yaml" for folder in PROMPT_FOLDERS]
    return places


def load_attacker_prompt(choice: str = DEFAULT_ATTACKER_PROMPT) -> AttackerPrompt:
    """Load a prompt by name (`crescendo_variant_1`) or from a YAML file in PyRIT's schema."""
    as_path = Path(choice).expanduser()
    if as_path.suffix in (".yaml", ".yml") and ("/" in choice or as_path.exists()):
        if not as_path.is_file():
            raise SaesteerError(f"attacker prompt file {as_path} not found")
        path = as_path
    else:
        candidates = attacker_prompt_candidates(choice)
        path = next((p for p in candidates if p.is_file()), None)  # type: ignore[assignment]
        if path is None:
            raise SaesteerError(f"attacker prompt {choice!r} not found (looked in the data directory's "
                                "pyrit_crescendo/ and an installed pyrit); set --data-dir to a folder holding "
                                "pyrit_crescendo/, pip install pyrit, or pass --attacker-prompt FILE.yaml")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SaesteerError(f"attacker prompt {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), str) or not doc["value"].strip():
        raise SaesteerError(f"attacker prompt {path} is not a PyRIT prompt YAML (it needs a `value` template)")
    parameters = [str(p) for p in doc.get("parameters") or []]
    unknown = [p for p in parameters if p not in KNOWN_PARAMETERS]
    if unknown:
        raise SaesteerError(f"attacker prompt {path} needs parameters {', '.join(unknown)}; "
                            f"only {', '.join(KNOWN_PARAMETERS)} are supplied")
    return AttackerPrompt(name=str(doc.get("name") or path.stem), path=path, template=doc["value"],
                          parameters=parameters, sha256=sha256_json(doc["value"]))



def copies_placeholder(message: str, placeholders: set[str]) -> bool:
    """Whether a message is one of the prompt's example messages (a wasted turn, counted)."""
    return any(_norm(message).startswith(p) for p in placeholders if p)


# --- reading the attacker's reply ---------------------------------------------------------------

@dataclass
class AttackMessage:
    text: str
    """The message for the target."""
    parsed: bool
    """False when the reply was not the JSON asked for and the raw text is used instead."""
    summary: str = ""
    rationale: str = ""


_NEXT_RE = re.compile(r'"?next[_ ]?message"?\s*:\s*"((?:[^"\\]|\\.)*)(?:"|$)', re.IGNORECASE | re.DOTALL)
_FENCE_RE = re.compile(r"```(?:json)?", re.IGNORECASE)
_LABEL_RE = re.compile(r"^\s*(?:next[_ ]?message|question|message|user|attacker)\s*[:\-]\s*", re.IGNORECASE)
MAX_MESSAGE_CHARS = 2000


def parse_attacker_reply(reply: str | None) -> AttackMessage | None:
    """The next message from an attacker's reply: its JSON, a `next_message` field found in broken
    JSON, or else the raw text (parsed=False). None when nothing usable is left."""
    if reply is None:
        return None
    text = _FENCE_RE.sub("", reply).strip()
    for obj in json_objects(text):
        lowered = {str(k).lower().replace(" ", "_"): v for k, v in obj.items()}
        message = lowered.get("next_message", lowered.get("nextmessage"))
        if isinstance(message, str) and message.strip():
            return AttackMessage(message.strip()[:MAX_MESSAGE_CHARS], True,
                                 str(lowered.get("last_response_summary", "")), str(lowered.get("rationale", "")))
    m = _NEXT_RE.search(text)
    if m:
        raw = m.group(1)
        try:
            message = json.loads(f'"{raw}"')
        except json.JSONDecodeError:
            message = raw.replace('\\"', '"').replace("\\n", "\n")
        if message.strip():
            return AttackMessage(message.strip()[:MAX_MESSAGE_CHARS], True)
    fallback = _LABEL_RE.sub("", text).strip().strip('"').strip()
    return AttackMessage(fallback[:MAX_MESSAGE_CHARS], False) if fallback else None

