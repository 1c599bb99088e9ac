# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install PyTorch (the pinned CPU build unless a torch is
# already importable by $(PYTHON)), then this package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.videomap-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	@if [ ! -x "$(PY)" ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "using the torch already importable by $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/videomap demo

# passive OpenMP waiting: the suite shares its cores (see src/videomap/threads.py)
test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/scan.py
	$(PY) benchmarks/backbone.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
