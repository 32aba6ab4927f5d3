"""Where dataset files come from: a local data directory, or the hub / their upstream repository.

A data directory is laid out like the project's `shared/data` (for example
`xstest/xstest_prompts.csv`). It is chosen with `--data-dir` or `SAESTEER_DATA`; without one,
files are downloaded once into the cache.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.files import atomic_path, cache_dir

_DATA_DIR_OVERRIDE: Path | None = None


def set_data_dir(path: str | Path | None) -> None:
    """Use `path` as the data directory for this process (the CLI's `--data-dir`)."""
    global _DATA_DIR_OVERRIDE
    if path is None:
        _DATA_DIR_OVERRIDE = None
        return
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SaesteerError(f"data directory {p} does not exist")
    _DATA_DIR_OVERRIDE = p


def data_dir() -> Path | None:
    """The local data directory in use, if any."""
    if _DATA_DIR_OVERRIDE is not None:
        return _DATA_DIR_OVERRIDE
    env = os.environ.get("SAESTEER_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise SaesteerError(f"SAESTEER_DATA={env} is not a directory; fix or unset it")
        return p
    return None


def local_or_download(relpath: str, url: str | None) -> Path:
    """Path of `relpath` in the data directory, or a cached download of `url`."""
    root = data_dir()
    if root is not None:
        path = root / relpath
        if not path.exists():
            raise SaesteerError(f"missing file {relpath} in data directory {root}; "
                                "add it there or unset SAESTEER_DATA to download it")
        return path
    if url is None:
        raise SaesteerError(f"{relpath} has no public download; set --data-dir / SAESTEER_DATA "
                            "to a folder that holds it")
    target = cache_dir() / "data" / relpath
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as tmp:
            tmp.write_bytes(response.read())
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise SaesteerError(f"cannot download {url} ({getattr(e, 'reason', e)}); set --data-dir or "
                            "SAESTEER_DATA to a local copy, or use the bundled prompt sets") from e
    return target


def hub_dataset(repo: str, config: str | None = None, split: str = "test", **kwargs: object):
    """Load a Hugging Face hub dataset split with `datasets` (imported lazily)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise SaesteerError("the `datasets` package is needed for hub datasets: pip install datasets") from e
    try:
        return datasets.load_dataset(repo, config, split=split, **kwargs)
    except Exception as e:  # datasets raises many types for network / auth / missing splits
        raise SaesteerError(f"cannot load hub dataset {repo}"
                            f"{'/' + config if config else ''} split {split} "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            "check the name, log in for gated sets, or use --data-dir") from e
