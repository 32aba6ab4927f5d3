import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The public datasets beside the checkout (CI runs a fresh clone with a copy of shared/ next to it)."""
# Tests that read public datasets use them unless SAESTEER_DATA says otherwise; the package itself
# keeps the hub as its default for users. A test that needs "no data directory" unsets it.
if not os.environ.get("SAESTEER_DATA") and SHARED_DATA.is_dir():
    os.environ["SAESTEER_DATA"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model (slow tests only)."""
    from saesteer.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_llama():
    from tests.tiny import tiny_model

    return tiny_model("llama")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Tests write caches under a temp folder, except slow tests that reuse the converted model."""
    if "smollm2" not in request.fixturenames:
        monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path_factory.mktemp("cache")))


class RecordingBar:
    """A stand-in for tqdm that records how a progress bar moves."""

    def __init__(self, iterable=None, *, total=None, initial=0, desc=None, **_):
        self.total, self.n, self.desc = total, initial, desc
        self.updates: list[int] = []
        self.postfixes: list[dict] = []

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def set_postfix(self, ordered_dict=None, **kwargs):
        self.postfixes.append(dict(ordered_dict or {}, **kwargs))

    def close(self):
        pass

    @staticmethod
    def write(*_args, **_kwargs):
        pass


@pytest.fixture()
def progress_bars(monkeypatch):
    """`watch(module, ...)`: the module's tqdm bars are recorded into the list it returns."""
    bars: list[RecordingBar] = []

    def make(*args, **kwargs):
        bars.append(RecordingBar(*args, **kwargs))
        return bars[-1]

    make.write = RecordingBar.write

    def watch(*modules):
        for module in modules:
            monkeypatch.setattr(module, "tqdm", make)
        return bars

    return watch
