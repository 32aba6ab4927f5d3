"""Atomic writes, JSON lines, hashing and the cache folder.

Every file saesteer writes goes through here so that an interrupted run never leaves a
half-written file behind: data is written to a temporary file beside the target, flushed to
disk, then renamed over it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): an orphan is told by its age alone
    fcntl = None  # type: ignore[assignment]

ORPHAN_AGE_S = 3600.0
"""Where file locks are unavailable, a temporary file unmodified this long is taken to be orphaned."""
_TMP_GRACE_S = 10.0
"""A temporary file younger than this is never removed: its writer may not hold its lock yet."""


def cache_dir() -> Path:
    """Where converted models and other derived files live (`SAESTEER_CACHE` overrides)."""
    root = os.environ.get("SAESTEER_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "saesteer"


def ensure_dir(path: str | Path) -> Path:
    """Create `path` (and parents); a clear error when the location is not writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaesteerError(f"cannot create folder {path}: {e.strerror}; choose a writable --out") from e
    if not os.access(path, os.W_OK):
        raise SaesteerError(f"folder {path} is not writable; choose another --out")
    return path


def _disk_error(path: Path, e: OSError) -> SaesteerError:
    if e.errno == errno.ENOSPC:
        return SaesteerError(f"disk full while writing {path}; free space and rerun (finished work is kept)")
    return SaesteerError(f"cannot write {path}: {e.strerror}")


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()
"""The mode a new file gets in this process (read once: setting the umask to read it is not thread-safe)."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path` in one rename."""
    path = Path(path)
    ensure_dir(path.parent)
    remove_orphaned_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if fcntl is not None:  # held until the rename: a live writer's file is never taken for an orphan
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)  # mkstemp makes the file owner-only; give it the usual mode
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(path, e) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_orphaned_tmp(path: str | Path) -> int:
    """Delete the temporary files that killed writers of `path` left beside it; return how many.

    Only names `atomic_path` makes for this very target (`.NAME.XXXXXXXX.tmp`) are candidates,
    and only regular files. A writer holds an exclusive lock on its temporary file until it
    renames it, so a file whose lock can be taken has no writer left (a kill releases the lock);
    where locks are unavailable, only a file unmodified for `ORPHAN_AGE_S` is taken.
    """
    path = Path(path)
    ours = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    try:
        entries = [e for e in os.scandir(path.parent) if ours.fullmatch(e.name)]
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if not entry.is_file(follow_symlinks=False):
                continue
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if age >= _TMP_GRACE_S and _remove_if_orphaned(entry.path, age):
                removed += 1
    return removed


def _remove_if_orphaned(tmp: str, age: float) -> bool:
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        orphaned = age >= ORPHAN_AGE_S
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                orphaned = True
            except BlockingIOError:  # a live writer holds it
                return False
            except OSError:  # the file system has no locks: fall back to the age
                pass
        if orphaned:
            os.unlink(tmp)
        return orphaned
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a NaN or infinite float (an undefined mean, a rate of nothing) is written as null."""
    write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=_json_default,
                                allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise SaesteerError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaesteerError(f"{path} is not valid JSON ({e}); delete or regenerate it") from e


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict]:
    """Read JSON lines. A torn last line (a killed writer) is dropped when tolerated.

    A torn line is one that lacks its newline and does not parse; a complete row without its
    newline is read (and `JsonlAppender` keeps it). Lines end at "\n" only: rows written with
    ensure_ascii=False may hold U+2028 or U+0085, where `str.splitlines` would cut them.
    """
    path = Path(path)
    if not path.exists():
        raise SaesteerError(f"file not found: {path}")
    rows: list[dict] = []
    data = path.read_bytes()
    if tolerate_torn_tail:
        data = data[:_whole_lines_end(data)]
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise SaesteerError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaesteerError(f"{path}:{n} is not valid JSON ({e.msg}); fix or delete that line") from e
        if not isinstance(row, dict):
            raise SaesteerError(f"{path}:{n} is a JSON {type(row).__name__}, not an object; each line must be "
                                "one {...} row: fix or delete that line")
        rows.append(row)
    return rows


class JsonlAppender:
    """Append rows to a JSON-lines file, each flushed and fsynced, so a kill loses at most one row.

    When the file is opened, a last line that lacks its newline is repaired: kept (and given its
    newline) if it parses, since `read_jsonl` counts it as done; cut off if it does not (a torn
    row left by a kill).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        ensure_dir(self.path.parent)
        if self.path.exists():
            _repair_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        try:
            self._f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise _disk_error(self.path, e) from e

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _whole_lines_end(data: bytes) -> int:
    """Where the data ends without its torn tail: a last line that lacks its newline and does
    not parse (not UTF-8 either: a kill may cut a character in half). A complete one stays."""
    cut = data.rfind(b"\n") + 1
    if cut == len(data):
        return cut
    try:
        json.loads(data[cut:].decode("utf-8"))
    except ValueError:  # JSONDecodeError or UnicodeDecodeError
        return cut
    return len(data)


def _repair_tail(path: Path) -> None:
    """End the file with a newline: keep a complete last row, cut a torn one (as `read_jsonl` reads them)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        end = _whole_lines_end(data)
        if end < len(data):
            f.truncate(end)
        else:
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temporary folder into place (replacing an older one)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def iter_lines(path: str | Path) -> Iterable[str]:
    with open(path, encoding="utf-8") as f:
        yield from (line.rstrip("\n") for line in f)
