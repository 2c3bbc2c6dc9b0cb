# Each target installs libtorch 2.11.0 first (once per user, cached; see scripts/setup-libtorch.sh).
# CUDA=1 (automatic where nvidia-smi lists a GPU) adds the CUDA libraries the torch wheel pins;
# DRY_RUN=1 lists them instead.
CARGO ?= cargo
CUDA ?=
DRY_RUN ?=

.PHONY: setup demo mnist test lint bench fuzz gpu-bundle
setup:
	@CUDA=$(CUDA) DRY_RUN=$(DRY_RUN) bash scripts/setup-libtorch.sh

# Main job on built-in data: train a CDM on a 2-D Gaussian mixture, score held-out points
# against the exact log-density, draw the learned and exact densities side by side with samples.
# Fifty levels, half of each batch drawn at the low ones: within 0.05 nats of the exact density,
# and enough levels for the sampler to land on the modes (docs/results.md §9.2).
demo: setup
	$(CARGO) run --release -- train --data gmm2d --out runs/demo --steps 3000 --timesteps 50 --low-levels 0.5
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

test: setup
	$(CARGO) test

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
