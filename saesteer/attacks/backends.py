"""Chat backends for the attacker and the success judge of a multi-turn attack.

Two kinds behind one batched call, `complete(conversations, ...) -> list[Reply]`:

* `EndpointBackend`: any OpenAI-compatible server (`POST {base_url}/chat/completions`).
  Timeouts, connection errors, 429 and 5xx are retried with exponential backoff, then a
  `SaesteerError` (the caller has already written its finished rows). A 200 whose body cannot be
  read is garbage, not an outage: retried once, then returned as `Reply(text=None)` for the
  caller to count.
* `HFBackend`: a local model through `saesteer.models` and `saesteer.generate`, sampled at the
  temperature asked for; all conversations go through one batched `generate` call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from saesteer.errors import SaesteerError
from saesteer.models import ChatModel, Conversation


@dataclass
class Reply:
    text: str | None
    """The reply, or None when the backend answered something unreadable."""
    error: str | None = None
    """Why `text` is None."""


class ChatBackend(Protocol):
    name: str
    supports_prefill: bool
    """True when `prefill` is honoured (the reply is forced to start with it)."""

    def complete(self, conversations: Sequence[Conversation], *, max_tokens: int, temperature: float,
                 seed: int = 0, stop: Sequence[str] = (), prefill: str | None = None) -> list[Reply]:
        """One reply per conversation, in order. With `prefill`, the text includes it."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


class EndpointBackend:
    """An OpenAI-compatible chat endpoint, with retries and backoff.

    Waits `backoff`, 2*`backoff`, 4*`backoff` ... seconds between `retries` retries. Other 4xx
    answers (bad key, unknown model) fail at once: retrying cannot fix them.
    """

    supports_prefill = False

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, api_key_env: str | None = None,
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, garbage_retries: int = 1,
                 concurrency: int = 4, sleep: Callable[[float], None] = time.sleep):
        import httpx

        if not base_url or not model:
            raise SaesteerError("an endpoint backend needs a base URL (e.g. http://localhost:8000/v1) and a model name")
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise SaesteerError(f"environment variable {api_key_env} (the API key) is not set")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"endpoint:{model}"
        self.retries, self.backoff, self.garbage_retries = retries, backoff, garbage_retries
        self.concurrency = max(1, concurrency)
        self.sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.garbage = 0
        """Replies that could not be read (counted, never raised)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "url": self.url, "model": self.model}

    def _post(self, body: dict[str, Any]) -> Reply:
        import httpx

        last = ""
        garbage_left = self.garbage_retries
        attempt = 0
        while True:
            try:
                r = self.client.post(self.url, json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                r = None
            if r is not None and 400 <= r.status_code < 500 and r.status_code != 429:
                raise SaesteerError(f"endpoint {self.url} refused the request: HTTP {r.status_code} "
                                    f"{r.text[:200]!r}; check the model name and the API key")
            if r is not None and r.status_code < 400:
                text = _content(r)
                if text is not None:
                    return Reply(text)
                if garbage_left > 0:
                    garbage_left -= 1
                    continue
                self.garbage += 1
                return Reply(None, f"unreadable reply: {r.text[:160]!r}")
            if r is not None:
                last = f"HTTP {r.status_code}"
            if attempt >= self.retries:
                raise SaesteerError(f"endpoint {self.url} failed after {attempt + 1} attempts ({last}); "
                                    "check that it is up and rerun the same command (finished rows are kept)")
            self.sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def complete(self, conversations: Sequence[Conversation], *, max_tokens: int, temperature: float,
                 seed: int = 0, stop: Sequence[str] = (), prefill: str | None = None) -> list[Reply]:
        bodies = []
        for i, conv in enumerate(conversations):
            body: dict[str, Any] = {"model": self.model, "messages": list(conv), "max_tokens": max_tokens,
                                    "temperature": temperature, "seed": seed * 1_000_003 + i}
            if stop:
                body["stop"] = list(stop)[:4]   # the OpenAI API takes at most four
            bodies.append(body)
        if self.concurrency == 1 or len(bodies) <= 1:
            return [self._post(b) for b in bodies]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._post, bodies))

    def close(self) -> None:
        self.client.close()


def _content(response: Any) -> str | None:
    """The message text of a chat-completions body, or None when the body is not one."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class HFBackend:
    """A local model (alias, hub id, folder or GGUF) as a chat backend.

    Conversations longer than the model's context lose their oldest exchanges (the system prompt
    and the last message are kept). `prefill` is appended after the assistant header, which keeps
    weak models on a JSON format.
    """

    supports_prefill = True

    def __init__(self, model: ChatModel | str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8):
        if isinstance(model, str):
            from saesteer.models import load_model

            model = load_model(model, device=device, dtype=dtype)
        self.lm = model
        self.name = f"hf:{model.name}"
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "model": self.lm.describe()}

    def _render(self, conv: Conversation, prefill: str | None, max_tokens: int) -> str:
        tok = self.lm.tokenizer
        budget = self.lm.context_length - max_tokens - 8
        messages = list(conv)
        while True:
            text = self.lm.chat(messages) + (prefill or "")
            if len(tok(text, add_special_tokens=False)["input_ids"]) <= budget:
                break
            first = 1 if messages and messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:
                raise SaesteerError(f"one message to {self.name} does not fit its {self.lm.context_length}-token "
                                    "context; lower the token limits")
            # Drop the oldest exchange (two messages) so that roles keep alternating.
            del messages[first:first + min(2, len(messages) - first - 1)]
        bos = tok.bos_token
        if bos and text.startswith(bos) and _adds_bos(tok):
            text = text[len(bos):]   # generate(chat=False) adds it again
        return text

    def complete(self, conversations: Sequence[Conversation], *, max_tokens: int, temperature: float,
                 seed: int = 0, stop: Sequence[str] = (), prefill: str | None = None) -> list[Reply]:
        from saesteer.generate import GenerationConfig, generate

        if not conversations:
            return []
        texts = [self._render(c, prefill, max_tokens) for c in conversations]
        config = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, batch_size=self.batch_size,
                                  seed=seed, stop_strings=tuple(stop))
        gens = generate(self.lm, texts, config, chat=False)
        return [Reply((prefill or "") + g.text) for g in gens]


def _adds_bos(tokenizer: Any) -> bool:
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id


def make_backend(model: str | None = None, *, endpoint: str | None = None, endpoint_model: str | None = None,
                 api_key_env: str | None = None, lm: ChatModel | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8) -> ChatBackend:
    """An endpoint backend when `endpoint` is given, else a local model (reusing `lm` if it is the same)."""
    if endpoint:
        if not endpoint_model:
            raise SaesteerError("an endpoint needs a model name too (--attacker-model / --judge-model)")
        return EndpointBackend(endpoint, endpoint_model, api_key_env=api_key_env)
    if not model:
        raise SaesteerError("give a local model or an endpoint URL for the backend")
    if lm is not None and model in (lm.name, lm.model_id):
        return HFBackend(lm, batch_size=batch_size)
    return HFBackend(model, device=device, dtype=dtype, batch_size=batch_size)
