"""Serve a (steered) model: an OpenAI-compatible API, micro-batched, and a side-by-side page."""

from saesteer.serve.app import create_app
from saesteer.serve.config import ServeSettings
from saesteer.serve.registry import Registry

__all__ = ["Registry", "ServeSettings", "create_app"]
