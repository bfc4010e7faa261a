# The two commands of the README: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo_stylized.mp4
STYLE  ?= starry_night
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

# torch is pinned to 2.13.0 in pyproject.toml: on CPU machines pip takes the local CPU wheel.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Renders IN (default: a demo clip built from scikit-image photos, with cuts and audio).
demo: install
	mkdir -p $(dir $(OUT))
ifeq ($(strip $(IN)),)
	$(BIN)/python -m pipeline.synthetic out/demo_input.mp4
	$(BIN)/filmstyle render out/demo_input.mp4 -o $(OUT) --style $(STYLE) $(ARGS)
else
	$(BIN)/filmstyle render "$(IN)" -o $(OUT) --style $(STYLE) $(ARGS)
endif

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf out .pytest_cache
