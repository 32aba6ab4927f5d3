"""`saesteer serve` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("serve", "Serve the (steered) model over an OpenAI-compatible API.")
