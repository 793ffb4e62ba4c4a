# Two entry points that set themselves up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint train-default train-gate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/cxr-serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# Reproduces the shipped model_store/pneumonia/1 (about 20 minutes on 2 CPU cores); writes the next free
# version unless VERSION is given, so the shipped one is not overwritten by accident. `--split image
# --no-calibrate` keep v1's image-level validation and uncalibrated output (the trainer's defaults changed).
train-default: $(STAMP)
	$(BIN)/cxr-train --data ../shared/data/chest_xray_224 --out runs/default $(if $(VERSION),--version $(VERSION)) \
		--target-sensitivity 0.95 --input-size 224 --filters 32,64,128,128,128,128 --dense 256 --balance undersample \
		--split image --no-calibrate

# Reproduces the shipped input gate model_store/gate/1 (5 source-grouped folds for the threshold and the
# validation figures, then the final fit on everything: about 30 minutes on 2 CPU cores).
train-gate: $(STAMP)
	$(BIN)/cxr-train-gate --data ../shared/data --out runs/gate $(if $(VERSION),--version $(VERSION))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
