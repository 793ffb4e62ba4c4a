# Two entry points that set themselves up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint train-default train-v1 train-gate train-gate-int8 site-example bench clean

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

# Reproduces the shipped default model_store/pneumonia/2 (about 20 minutes on 2 CPU cores): two members of one
# recipe (Otsu at 128 px, class weights, strong augmentation, cosine 30 epochs; seeds 27 and 28, one patient-
# grouped validation split), each into a scratch store under runs/default/, then both as one Keras model with
# its temperature and threshold fitted on validation. Writes the next free version unless VERSION is given.
V2_RECIPE := --data ../shared/data/chest_xray_224 --cache runs/cache --target-sensitivity 0.965 --seed 1337 \
	--input-size 128 --binarize otsu --arch plain --filters 16,32,64,96,128,128 --dense 256 --dropout 0.5 \
	--l1 1e-5 --lr 1e-3 --batch-size 64 --balance class-weight --schedule cosine --warmup-epochs 2 --epochs 30 \
	--patience 100 --augment-scale 1.5 --augment-intensity 1.6667 --augment-gamma 0.4
V2_SEEDS := 27 28
train-default: $(STAMP)
	for seed in $(V2_SEEDS); do \
		$(BIN)/cxr-train $(V2_RECIPE) --member-seed $$seed --out runs/default/m$$seed \
			--store runs/default/m$$seed/store --version 1 || exit 1; \
	done
	$(BIN)/python -m training.ensemble --data ../shared/data/chest_xray_224 --cache runs/cache \
		--members $(foreach seed,$(V2_SEEDS),runs/default/m$(seed)/store/pneumonia/1/model.h5) \
		--out runs/default/ensemble $(if $(VERSION),--version $(VERSION))

# Reproduces model_store/pneumonia/1, the first default (about 20 minutes); `--split image --no-calibrate` keep
# v1's image-level validation and uncalibrated output (the trainer's defaults changed since).
train-v1: $(STAMP)
	$(BIN)/cxr-train --data ../shared/data/chest_xray_224 --out runs/v1 $(if $(VERSION),--version $(VERSION)) \
		--target-sensitivity 0.95 --input-size 224 --filters 32,64,128,128,128,128 --dense 256 --balance undersample \
		--split image --no-calibrate

# Reproduces the shipped input gate model_store/gate/2 with VERSION=2 (gate/1 was the same recipe at 16 epochs
# without boost, before the hand, limb and lateral kinds; 5 source-grouped folds for the threshold and the
# validation figures, then the final fit on everything: about 30 minutes on 2 CPU cores).
train-gate: $(STAMP)
	$(BIN)/cxr-train-gate --data ../shared/data --out runs/gate --epochs 24 --boost chest_lateral=4 $(if $(VERSION),--version $(VERSION))

# Reproduces the shipped gate model_store/gate/3 with VERSION=3: gate/2's weights served as dynamic-range int8
# (a third of float32's cost), exported only because int8 decides no image worse than float32 at gate/2's
# threshold, out of fold (the same recipe's five folds, retrained) and with gate/2's weights on every image
# (about 10 minutes on 2 CPU cores).
train-gate-int8: $(STAMP)
	$(BIN)/cxr-train-gate --data ../shared/data --out runs/gate-int8 --epochs 24 --boost chest_lateral=4 \
		--score-runtime tflite-int8 --weights-from 2 $(if $(VERSION),--version $(VERSION))

# Reproduces the shipped site example model_store/sites/kermany-test-half/pneumonia/3 (about a minute): v2
# calibrated on the test half of chest_xray_224 playing a hospital's local sample (calibration only, never
# training), into a scratch store unless SITE_STORE is given. docs/site-adaptation.md explains the choices.
SITE_STORE ?= runs/site-example/kermany-test-half
site-example: $(STAMP)
	$(BIN)/cxr-site calibrate ../shared/data/chest_xray_224/test --model-version 2 --site kermany-test-half \
		--sensitivity 0.96 --store $(SITE_STORE) --no-progress

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
