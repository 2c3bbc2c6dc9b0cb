# Each target installs libtorch 2.11.0 first (once per user, cached; see scripts/setup-libtorch.sh).
# CUDA=1 (automatic where nvidia-smi lists a GPU) adds the CUDA libraries the torch wheel pins;
# DRY_RUN=1 lists them instead.
CARGO ?= cargo
CUDA ?=
DRY_RUN ?=

.PHONY: setup demo mnist cifar10 test python-test wheel lint bench fuzz gpu-bundle
setup:
	@CUDA=$(CUDA) DRY_RUN=$(DRY_RUN) bash scripts/setup-libtorch.sh

# Main job on built-in data: train a CDM on a 2-D Gaussian mixture, score held-out points
# against the exact log-density, draw the learned and exact densities side by side with samples.
# The defaults for 2-D data, fifty levels with half of each batch drawn at the low ones: within
# 0.05 nats of the exact density, and enough levels for the sampler to land on the modes
# (docs/results.md §9.2, §15).
demo: setup
	$(CARGO) run --release -- train --data gmm2d --out runs/demo --steps 3000
	$(CARGO) run --release -- nll --ckpt runs/demo --data gmm2d
	$(CARGO) run --release -- plot density --ckpt runs/demo --out runs/demo/density.png

# MNIST end to end (docs/results.md §4.3): a class-conditional CDM on the tiny UNet with a
# per-class Gaussian base (MODEL=ddm trains its denoising twin the same way), then grids drawn
# with the null label, with each class, with guidance, and a denoising strip, in runs/mnist_MODEL.
# About an hour on two CPU cores; the run resumes where it stopped.
MODEL ?= cdm
STEPS ?= 2000
MNIST_RUN = runs/mnist_$(MODEL)
SAMPLE = $(CARGO) run --release -- sample --ckpt $(MNIST_RUN) --n 100 --sampler ddim --steps 50 --clip-x0 1
mnist: setup
	$(CARGO) run --release -- train --data mnist --conditional --model $(MODEL) --base-per-class --min-snr 5 --preset tiny --batch 32 --lr 4e-4 --steps $(STEPS) --sample-every 500 --checkpoint-every 500 --out $(MNIST_RUN)
	$(SAMPLE) --unconditional --out $(MNIST_RUN)/unconditional.png
	$(SAMPLE) --out $(MNIST_RUN)/conditional.png
	$(SAMPLE) --guidance 1 --out $(MNIST_RUN)/guided.png
	$(CARGO) run --release -- plot strip --ckpt $(MNIST_RUN) --data mnist:split=test --out $(MNIST_RUN)/strip.png

# The CDM paper's CIFAR-10 recipe (configs/cifar10.toml; MODEL=ddm trains its DDM twin on the same
# UNet), CIFAR-10 fetched on first use: 500k steps (STEPS=N for fewer), a sample grid every 5k and
# an FID of FID_SAMPLES EMA samples every FID_EVERY steps in log.jsonl, then the training curves
# and the paper's rows (scripts/cifar10-eval.sh: FID for DDPM-1000, DDIM-50/100, DPM-Solver-2 at 25
# steps against FID_REFERENCE training images; test-set bits/dim) in runs/cifar10_MODEL. Resumes
# where it stopped. A GPU job (DEVICE=cuda): about 240 ms a CDM step on one H200 in f32.
CIFAR_STEPS = $(if $(filter command line environment,$(origin STEPS)),$(STEPS),500000)
CIFAR_RUN = runs/cifar10_$(MODEL)
FID_SAMPLES ?= 10000
FID_EVERY ?= 25000
FID_REFERENCE ?= 50000
cifar10: setup
	$(CARGO) build --release
	target/release/cdm train --config configs/cifar10.toml --model $(MODEL) --steps $(CIFAR_STEPS) --fid-every $(FID_EVERY) --fid-samples $(FID_SAMPLES) --device $(DEVICE) --out $(CIFAR_RUN)
	target/release/cdm plot training $(CIFAR_RUN) --out $(CIFAR_RUN)/training
	bash scripts/cifar10-eval.sh $(CIFAR_RUN) $(DEVICE) $(FID_SAMPLES) $(FID_REFERENCE)

test: setup
	$(CARGO) test
	bash scripts/python-test.sh

# The Python package's tests alone (python/tests; torch 2.11, maturin, pytest and numpy are
# installed once per user by scripts/setup-pytorch.sh and scripts/setup-python.sh).
python-test: setup
	bash scripts/python-test.sh

# The Python package as a wheel in target/wheels (`pip install target/wheels/cdm-*.whl`).
wheel: setup
	bash scripts/python-wheel.sh

# Every parser of outside bytes (.npy, IDX plain and gzip, CIFAR-10 batches, PNG/JPEG, safetensors,
# config.json, TOML/JSON configs, data specs) on N mutated inputs each (tests/fuzz.rs); `make test`
# runs 5000 each. SEED picks another stream of mutations. Figures: docs/results.md §7.
N ?= 1000000
SEED ?= 0
fuzz: setup
	CDM_FUZZ_INPUTS=$(N) CDM_FUZZ_SEED=$(SEED) $(CARGO) test --test fuzz -- --nocapture --test-threads 1

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd python && $(CARGO) fmt --check && CARGO_TARGET_DIR=../target $(CARGO) clippy -- -D warnings

# Training and sampling steps against the same steps in PyTorch (bench/reference.py), every size,
# on DEVICE (auto: the GPU if there is one). The paper's CIFAR-10 UNet at batch 8 on a CPU.
DEVICE ?= auto
BENCH = PYTHONPATH=$$(bash scripts/setup-pytorch.sh) $(CARGO) run --release -- bench --device $(DEVICE)
bench: setup
	$(BENCH) --size mlp2d
	$(BENCH) --size cube
	$(BENCH) --size unet-cdm
	$(BENCH) --size unet-ddm
	$(BENCH) --size convnet-cdm
	$(BENCH) --size cifar10-cdm $$([ $(DEVICE) = cuda ] || echo --batch 8 --steps 5)
	$(BENCH) --size cifar10-ddm $$([ $(DEVICE) = cuda ] || echo --batch 8 --steps 5)

# What scripts/gpu-check.sh needs on a GPU host (no Rust, no network, at most 64 MiB): the
# release binary, the GPU test binary, MNIST and a run to resume (RUN=DIR, e.g. the last check's
# $$OUT/mnist), compressed into gpu-bundle/.
RUN ?=
gpu-bundle: setup
	RUN=$(RUN) bash scripts/gpu-bundle.sh
