"""`saesteer demo` (placeholder until the stage is built)."""

from saesteer.cli.common import not_built

not_built("demo", "The whole paper in one command, offline.")
