//! # cdm: classification diffusion models
//!
//! A diffusion model that is a noise-level classifier (Yadin, Elata, Michaeli, "Classification
//! Diffusion Models", 2024, arXiv:2402.10095). The classifier's input gradient is the MMSE
//! denoiser (Theorem 3.1), so every diffusion sampler runs on it, and its logits give the exact
//! log-likelihood in one forward pass (Theorem 3.2).
//!
//! ## Notation
//! | symbol | meaning |
//! |---|---|
//! | `t` | noise level and class index, 0 (clean) ..= T+1 (pure noise) |
//! | `alpha_bar` | ᾱ_t; x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε |
//! | `x0`, `x_t`, `eps` | clean data, noisy data, the Gaussian noise ε |
//! | `logits` | l(x) = cumsum(h(x)) over the T+2 levels |
//! | `F` | F(x, t) = l_{T+1}(x) - l_t(x); log p_t(x) = log N(x; 0, I) - F(x, t) |
//! | `gamma` | log SNR γ = ln(ᾱ/(1-ᾱ)); a fractional level's γ is interpolated between integer ones |
//! | `zeta` | ζ, the log SNR of the extra noise of the contrastive diffusion loss (Wu et al. 2024, arXiv:2407.08946) |
//!
//! ## Layout
//! `schedule` (ᾱ_t), `base` (a Gaussian fit's exact outputs, added to a network's), `nets` (MLP, ConvNet encoder, UNet), `network` (what a
//! classifier or denoiser is built from), `input` (checks of a model's inputs), `classifier` (cumsum head, F, ε̂ by
//! input gradient), `denoiser` (the DDM baseline), `model` (either kind behind one type; it alone depends on both),
//! `predictor` (the one trait samplers use), `loss`, `likelihood`, `batches` (points through a model in chunks), `eval` (what `cdm eval` reports, as a typed `Report`), `sample` (DDPM, DDIM,
//! DPM-Solver, guidance, parallel sampling), `train` (and `train::resolve`, a run's settings), `optim` (flat Adam and EMA), `precision` (f32, f64, bf16 autocast), `inference_mode` (libtorch's guard that skips autograd's bookkeeping), `config_file` (`cdm train --config`), `checkpoint` (and loading a trained run), `run_lock` (one writer per run folder), `signals` (Ctrl-C and SIGTERM stop training at a checkpoint), `data` (files, images, known densities), `metrics`
//! (AUROC, confusion matrix, FID, MMD), `cache` (downloads kept per user), `plot` (and the figures of `cdm plot`), `bench` (what `cdm bench` times), `device` (CPU or a
//! GPU, loading libtorch's CUDA backend at run time), `cuda_graph` (network calls replayed as CUDA graphs), `distributed` (data-parallel ranks on c10d).
pub mod base;
pub mod batches;
pub mod bench;
pub mod cache;
pub mod checkpoint;
pub mod classifier;
pub mod config_file;
pub mod cuda_graph;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod inference_mode;
pub mod input;
pub mod likelihood;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod nets;
pub mod network;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod predictor;
pub mod rng;
pub mod run_lock;
pub mod sample;
pub mod schedule;
pub mod signals;
pub mod train;

pub use error::{Error, Result};
