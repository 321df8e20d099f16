# Two entry points for a fresh machine:
#   make study   set up .venv with what the study needs (torch + the [study] extra) and run the main job
#   make test    set up .venv with everything (requirements-dev.txt) and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The study's own stamp: `make study` installs torch and the [study] extra only (no triton, transformers,
# lightning or mkdocs). The full install (make test) also satisfies it.
STUDY_STAMP := $(VENV)/.installed-study

# torch is installed first, alone and pinned, so that no later requirement can pull another build.
# Which build: TORCH_BUILD=auto (default) takes PyPI's default build where an NVIDIA GPU is visible
# (nvidia-smi, /proc/driver/nvidia) or on macOS (whose PyPI wheels have no CUDA), and otherwise the
# CPU build, torch==$(TORCH_VERSION)+cpu: first from what pip already has (its configured find-links,
# --no-index: no network, no timeout to wait out), then from the CPU index (and pip's configured ones)
# with a short timeout and no retries. The +cpu pin matches no CUDA build, so it can never fall back to
# PyPI's multi-GB CUDA wheel; it stops with a message instead. TORCH_BUILD=cpu or TORCH_BUILD=cuda
# (PyPI's default build) forces a choice.
TORCH_VERSION   := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_BUILD     ?= auto

.PHONY: venv venv-study lint test study bench report-check docs clean

venv: $(STAMP)
venv-study: $(STUDY_STAMP)

define install_torch
	@build="$(TORCH_BUILD)"; \
	if [ "$$build" = auto ]; then \
		if [ "$$(uname -s)" = Darwin ] || nvidia-smi -L >/dev/null 2>&1 || [ -n "$$(ls /proc/driver/nvidia/gpus 2>/dev/null)" ]; \
		then build=cuda; else build=cpu; fi; \
	fi; \
	case "$$build" in \
	cuda) echo "torch: installing torch==$(TORCH_VERSION) from PyPI (its default build; CUDA on Linux)"; \
		$(PIP) install -q torch==$(TORCH_VERSION) ;; \
	cpu) echo "torch: installing the CPU build, torch==$(TORCH_VERSION)+cpu"; \
		$(PIP) install -q --no-index --no-deps torch==$(TORCH_VERSION)+cpu 2>/dev/null || { \
		echo "torch: no local wheel for torch==$(TORCH_VERSION)+cpu; trying $(TORCH_CPU_INDEX)"; \
		$(PIP) install -q --no-deps --retries 0 --timeout 20 --extra-index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)+cpu; } || { \
		echo "error: cannot install the CPU build torch==$(TORCH_VERSION)+cpu: no wheel where pip looks" \
			"(find-links, its indexes), and $(TORCH_CPU_INDEX) unreachable or without it. Put the wheel in a folder and run" \
			"PIP_FIND_LINKS=/that/folder make ..., or make TORCH_BUILD=cuda ... for PyPI's default (CUDA) build." >&2; \
		exit 1; } ;; \
	*) echo "error: TORCH_BUILD must be auto, cpu or cuda, got '$$build'" >&2; exit 1 ;; \
	esac
endef

# Everything: the study, the tests, lint, docs, the integrations (requirements-dev.txt pins torch too).
$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(install_torch)
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP) $(STUDY_STAMP)

# The study alone: torch, then labelsmooth with its [study] extra (pyproject.toml), torch still pinned.
$(STUDY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(install_torch)
	$(PIP) install -q -e '.[study]' torch==$(TORCH_VERSION)
	touch $(STUDY_STAMP)

# Lint and type checks, pinned in requirements-dev.txt so that results do not drift under CI.
lint: venv
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(PY) -m mypy

# lint is a prerequisite, so `make test` fails fast on a lint or type error before the slower pytest run.
test: venv lint
	$(PY) -m pytest -q -p no:cacheprovider

# The main job: the default grid (about 905–1014 CPU-seconds: 7 min 44 s to 8 min 43 s measured on 2 idle cores); outputs in runs/latest
# (results.json, report.html, summary.md, findings.md). Interrupted? Run it again: finished runs are skipped.
# Redirected to a file it prints a progress line every 30 s; at the end, its wall-clock and CPU time and the
# load average (compare those with the measured times: a busy machine takes longer).
study: venv-study
	$(VENV)/bin/labelsmooth study --out runs/latest

bench: venv
	$(VENV)/bin/labelsmooth bench

# The report as a reader sees it: a small study's report (or REPORT=path/to/report.html) opened in
# headless Chromium in a 1400 px window; fails if anything is wider than the window, a table has to
# scroll or a figure is shrunk. Screenshots and layout numbers land in runs/report-check/. Needs
# Chromium (Debian/Ubuntu: apt-get install chromium; elsewhere set CHROMIUM=/path/to/chrome).
report-check: venv
	REPORT_CHECK_REQUIRE=1 REPORT_CHECK_OUT=runs/report-check REPORT_CHECK_HTML="$(REPORT)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_report_render.py

# The API documentation (mkdocs.yml) into site/: strict, so a broken link, anchor or docstring fails it.
# Needs no network; open site/index.html or run `$(PY) -m mkdocs serve` for a live preview.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
