# Two commands on a fresh clone with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed
# optimum (the `optimum-*` bench peer, the optimum-folder tests) lives in a virtualenv of its own: its
# transformers and huggingface_hub cannot coexist with ours (constraints-optimum.txt says why).
OPT_VENV ?= .venv-optimum
OPT_STAMP := $(OPT_VENV)/.installed

.PHONY: demo test lint bench-smoke clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build (see README, "Installing").
	$(PIP) torch==2.13.0
	# Only for its CLIP BPE vocabulary file; its dependencies (torchvision) are not wanted.
	$(PIP) --no-deps open_clip_torch
	$(PIP) -e ".[export,dev]"
	touch $@

$(OPT_STAMP): constraints-optimum.txt
	$(PYTHON) -m venv $(OPT_VENV)
	$(OPT_VENV)/bin/python -m pip install --disable-pip-version-check -q -c constraints-optimum.txt torch==2.13.0
	$(OPT_VENV)/bin/python -m pip install --disable-pip-version-check -q -c constraints-optimum.txt \
		"optimum-onnx[onnxruntime]" diffusers transformers scipy pillow
	touch $@

demo: $(STAMP)
	$(VENV)/bin/outpaint demo

test: $(STAMP) $(OPT_STAMP)
	-.ci/ensure-chromium  # the browser test skips without it (CI sets OUTPAINT_REQUIRE_BROWSER=1: fails)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright

clean:
	rm -rf $(VENV) $(OPT_VENV) models out .pytest_cache
