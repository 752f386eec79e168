# Set-up is two commands: `make demo` and `make test`. Both create .venv if needed and install with the pins.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install data test demo bench mutation clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST, the embedded default data set, from Debian's package (the code falls back to the Hub copy
# when this cannot be installed and the machine is online).
data:
	@if [ ! -f $(FMNIST) ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "warning: could not install dataset-fashion-mnist; the Hub copy will be used when online"; \
	fi

test: install data
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# `make demo` replaces the results of an earlier `make demo` in demo_out/ (the command alone refuses a non-empty --out)
demo: install data
	$(PY) training/demo.py --overwrite $(DEMO_ARGS)

bench: install data
	$(PY) -m bench.run_cpu

# Mutation check of the core modules (about an hour on 2 cores; not part of `make test`): score and survivors in
# bench/results/mutation.json, what they mean in docs/mutation.md
mutation: install data
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".[dev,mutation]"
	HF_HUB_OFFLINE=1 $(PY) -m bench.mutation

clean:
	rm -rf $(VENV) .pytest_cache mutants
