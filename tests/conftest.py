import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
