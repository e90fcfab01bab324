# Two commands do all setup on a fresh Debian machine with Python 3.11:
#   make demo   - create .venv, install, fetch Fashion-MNIST (Debian package), run the main job
#   make test   - create .venv, install, lint and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test lint clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian ships Fashion-MNIST as a package; elsewhere set EDGENAS_DATA or let torchvision download it.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	fi

# Until the search/export stages land, the main job trains the supernet and scores sampled subnets
# on the test split. Rerunning resumes (a finished run is kept, not retrained).
DEMO := runs/demo
demo: setup data
	$(BIN)/edgenas train --space mbv3 --width-mult 0.5 --data fashion-mnist --epochs 3 --train-limit 30000 \
		--out $(DEMO) $$([ -f $(DEMO)/supernet.pt ] && echo --resume)
	$(BIN)/edgenas eval --supernet $(DEMO)/supernet.pt --sample 5 --split test

lint: setup
	$(BIN)/ruff check edgenas tests benchmarks

test: setup data lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
