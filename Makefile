# Each target installs libtorch 2.11.0 first (once per user, cached; see scripts/setup-libtorch.sh).
CARGO ?= cargo

.PHONY: setup demo test lint bench
setup:
	@bash scripts/setup-libtorch.sh

# Main job on built-in data: train a CDM on a 2-D Gaussian mixture, score held-out points
# against the exact log-density, draw the learned and exact densities side by side. Ten levels:
# in 2-D they still overlap, and each one's log-ratio error adds to log p (docs/results.md §1).
demo: setup
	$(CARGO) run --release -- train --data gmm2d --out runs/demo --steps 3000 --timesteps 10
	$(CARGO) run --release -- nll --ckpt runs/demo --data gmm2d
	$(CARGO) run --release -- plot density --ckpt runs/demo --out runs/demo/density.png

test: setup
	$(CARGO) test

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Training and sampling steps against the same steps in PyTorch (bench/reference.py), every size.
bench: setup
	PYTHONPATH=$$(bash scripts/setup-pytorch.sh) $(CARGO) run --release -- bench --size mlp2d
	PYTHONPATH=$$(bash scripts/setup-pytorch.sh) $(CARGO) run --release -- bench --size cube
	PYTHONPATH=$$(bash scripts/setup-pytorch.sh) $(CARGO) run --release -- bench --size unet-cdm
	PYTHONPATH=$$(bash scripts/setup-pytorch.sh) $(CARGO) run --release -- bench --size unet-ddm
