# Two entry points for a fresh machine:
#   make study   set up .venv and run the main job
#   make test    set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv lint test study bench report-check docs clean

venv: $(STAMP)

# torch is installed first, alone and pinned, so that no later requirement can pull a CUDA build.
$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

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
study: venv
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
