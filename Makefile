# Two commands do all setup on a fresh Debian machine with Python 3.11:
#   make demo   - create .venv, install, fetch Fashion-MNIST (Debian package), run the main job
#   make test   - create .venv, install, lint and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test lint check-bundle clean

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

# The main job: the whole pipeline (train the supernet, latency table, Supernet Shifting search under
# a cpu-ort budget at the 25th percentile of the space's predicted latency on this machine (the same
# tightness on a fast or a slow machine), extract, fine-tune, ONNX export + int8, latency check) at a CPU demo scale.
# Rerunning resumes at the first unfinished stage; a finished run just prints its summary again.
DEMO := runs/demo
demo: setup data
	$(BIN)/edgenas run --profile cpu-ort --data fashion-mnist --latency-quantile 0.25 --epochs 3 --train-limit 20000 \
		--population 12 --generations 3 --topk 4 --mutations 4 --crossovers 4 --finetune-epochs 2 \
		--out $(DEMO) $$([ -f $(DEMO)/stages.json ] && echo --resume)

lint: setup
	$(BIN)/ruff check edgenas tests benchmarks

test: setup data lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# CI's latency regression check of the reference bundle (baseline recorded in its manifest).
REFERENCE_BUNDLE := export/fashion-mnist-cpu-ort
CHECK_TOLERANCE ?= 10%
check-bundle: setup
	$(BIN)/edgenas check $(REFERENCE_BUNDLE) --profile cpu-ort --tolerance $(CHECK_TOLERANCE) --junit runs/ci/latency.xml

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
