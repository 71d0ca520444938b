# The README's commands: `make demo` runs the demo, `make test` runs the whole suite.
# Each creates what it needs (a virtualenv in .venv, Debian packages when run as root).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench system-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clerk-gateway demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The whole suite twice: on uvloop (the default loop where installed), then on asyncio.
test: $(STAMP) system-deps lint
	GATEWAY_EVENT_LOOP=uvloop $(VENV)/bin/pytest -q -p no:cacheprovider
	GATEWAY_EVENT_LOOP=asyncio $(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

system-deps:
	bash .ci/system-deps

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
