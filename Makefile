# Two entry points for a fresh machine: `make demo` and `make test`. Each sets up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo

.PHONY: demo test install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# torch==2.13.0 resolves to the CPU wheel present on these machines (reference implementation for tests only).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job on the embedded defaults (~20 min on a 2-core CPU from nothing, see README): SmolLM2 folding vs magnitude
# pruning on held-out Shakespeare, then the Fashion-MNIST ResNet18 sweep over the main corrections (the model is
# trained first when $(WORKDIR)/resnet18_fmnist has no checkpoint). Resumable: rerunning skips finished points.
demo: install
	$(BIN)/jaxfold data fetch fashion_mnist smollm2 shakespeare
	$(BIN)/jaxfold sweep --config configs/smollm2_shakespeare.py:demo --workdir $(WORKDIR)/sweep_smollm2
	$(BIN)/python paper_figs/llm.py $(WORKDIR)/sweep_smollm2 --out $(WORKDIR)/figures/smollm2
	$(BIN)/jaxfold sweep --config configs/resnet18_fmnist.py:demo --workdir $(WORKDIR)/sweep_resnet18 \
		--config.sweep.checkpoint=$(WORKDIR)/resnet18_fmnist/checkpoint
	$(BIN)/python paper_figs/cv.py $(WORKDIR)/sweep_resnet18 --out $(WORKDIR)/figures/resnet18

lint: install-dev
	$(BIN)/ruff check .

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/jaxfold data fetch fashion_mnist mnist smollm2 shakespeare
	$(BIN)/python -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
