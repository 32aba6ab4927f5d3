"""The `saesteer` command: one subcommand per pipeline stage, each a thin call into the API.

Each stage's commands live in their own module here and register on `app` (or on `eval_app`
for `saesteer eval ...`) when imported.
"""

from __future__ import annotations

import errno
import importlib
import sys

import typer

from saesteer.cli.common import app, say
from saesteer.errors import SaesteerError

STAGE_MODULES = ("core", "train", "discover", "judge", "evaluate", "capability", "multiturn", "attacks", "sweep", "search", "serve", "demo")
for _name in STAGE_MODULES:
    importlib.import_module(f"saesteer.cli.{_name}")


def main() -> None:
    try:
        app()
    except SaesteerError as e:
        say(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        say("interrupted; rerun the same command to continue from the last finished step")
        sys.exit(130)
    except OSError as e:
        reason = WRITE_ERRORS.get(e.errno)
        if reason is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        fix = PATH_FIXES.get(e.errno, "make room or choose another --out")
        say(f"error: {reason}{where}; {fix}, then rerun the same command to continue from the last finished step")
        sys.exit(2)


# Errors of the machine rather than of saesteer: finished files are intact (every write is atomic).
WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the output folder is on a read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EISDIR: "a folder is in the way of an output file",
                errno.EEXIST: "a file is in the way of an output folder",
                errno.ENOTDIR: "a file is in the way of an output folder"}
PATH_FIXES = {errno.EISDIR: "choose a file path for --out (or move the folder)",
              errno.EEXIST: "choose a folder path for --out (or move the file)",
              errno.ENOTDIR: "choose a folder path for --out (or move the file)"}


__all__ = ["app", "main", "typer"]
