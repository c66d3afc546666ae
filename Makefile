# attnbook: two commands for a newcomer (`make serve`, `make test`), a few helpers for contributors.
# Every target creates .venv and installs the pinned versions first, if it has to.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_MKDOCS_2_WARNING := 1

.PHONY: help install serve test build chapter refresh lock clean bench links

help:
	@echo "make serve               build the site and serve it at http://127.0.0.1:8000 (live reload)"
	@echo "make test                the whole suite: every page block, unit tests, labs, strict site build"
	@echo "make chapter PAGE=...    test one page, e.g. PAGE=docs/chapters/01-self-attention.md"
	@echo "make refresh [PAGE=...]  rewrite Output blocks from a real run (review with git diff)"
	@echo "make build               the strict site build alone, into site/"
	@echo "make links               list the external links of every page (not checked, never fails)"
	@echo "make bench [ARGS=--quick] benchmarks against torch (interleaved ratios); rewrites the"
	@echo "                          tables in docs/results/ that chapters 15 and 17 include"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "attnbook needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python requirements/lock.txt pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/mkdocs serve --livereload --dev-addr 127.0.0.1:8000

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile

build: $(STAMP)
	$(BIN)/mkdocs build --strict

chapter: $(STAMP)
	$(BIN)/python -m pytest $(PAGE)

refresh: $(STAMP)
	$(BIN)/python -m pytest $(or $(PAGE),docs) --update-outputs -q

# Re-pin requirements/lock.txt from the ranges in pyproject.toml, in a throw-away venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[test]"
	{ sed -n '1,3p' requirements/lock.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^-e' | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) site .cache .pytest_cache .hypothesis

bench: $(STAMP)
	$(BIN)/python -m attnbook.bench $(ARGS)

links: $(STAMP)
	$(BIN)/python tools/external_links.py docs
