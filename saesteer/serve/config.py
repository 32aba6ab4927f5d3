"""Settings of one `saesteer serve` deployment: auth, limits and batching."""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.errors import SaesteerError


@dataclass
class ServeSettings:
    api_key: str | None = None
    """Bearer token every /v1 request must send; None serves without auth (loopback only, `--no-auth`)."""
    max_body_bytes: int = 1_048_576
    """Largest request body; larger ones get HTTP 413 before they are read."""
    max_messages: int = 64
    """Most messages in one conversation (HTTP 413 above)."""
    max_prompt_tokens: int | None = None
    """Most prompt tokens after the chat template (HTTP 413 above); None: the model's context minus one."""
    max_tokens: int = 1024
    """Largest `max_tokens` a request may ask for (HTTP 422 above)."""
    default_max_tokens: int = 256
    """`max_tokens` of a request that gives none (lowered to what fits the context)."""
    default_temperature: float = 0.0
    """Temperature of a request that gives none. OpenAI's default is 1.0; greedy keeps steered vs
    unsteered comparisons deterministic."""
    max_n: int = 4
    """Most choices (`n`) per request."""
    max_queue: int = 64
    """Most requests waiting for the model; more get HTTP 429 with Retry-After."""
    max_batch_size: int = 16
    """Most rows (requests x n) in one generate call."""
    batch_wait_ms: float = 0.0
    """How long the worker waits for more requests when it would start a batch of one."""
    retry_after_s: int = 1
    """Retry-After seconds sent with HTTP 429."""
    page: bool = True
    """Serve the side-by-side web page at /."""

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise SaesteerError("the API key is empty; pass a non-empty --api-key or use --no-auth on loopback")
        for name in ("max_body_bytes", "max_messages", "max_tokens", "default_max_tokens", "max_n", "max_queue",
                     "max_batch_size"):
            if getattr(self, name) < 1:
                raise SaesteerError(f"{name.replace('_', '-')} must be at least 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise SaesteerError("max-prompt-tokens must be at least 1")
        if self.default_max_tokens > self.max_tokens:
            raise SaesteerError("default-max-tokens cannot exceed max-tokens")
        if not 0 <= self.default_temperature <= 2:
            raise SaesteerError("default temperature must be between 0 and 2")
        if self.batch_wait_ms < 0:
            raise SaesteerError("batch-wait-ms must be >= 0")
