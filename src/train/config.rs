//! The settings of a training run: the optimiser's, and the whole run's (data, model,
//! training) as saved in `config.json`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::loss::CdlConfig;
use crate::model::{ModelConfig, ModelKind};
use crate::nets::MlpConfig;
pub use crate::precision::Precision;
use crate::schedule::{ScheduleConfig, ScheduleKind};
use crate::{Error, Result};

/// How the learning rate falls after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrDecay {
    Constant,
    /// Multiply by `factor` every `every` steps (the official CDM code: 0.1 every 200k).
    Step {
        every: u64,
        factor: f64,
    },
    /// Cosine from the peak to zero at the last step.
    Cosine,
}

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimiser steps.
    pub steps: u64,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak Adam learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Decay after warm-up.
    pub lr_decay: LrDecay,
    /// EMA decay of the evaluation weights (ramped up as min(decay, (1+k)/(10+k))).
    pub ema_decay: f64,
    /// Clip the global gradient norm to this value; `false` in a config file (or `--grad-clip
    /// off`) switches it off.
    #[serde(deserialize_with = "off_or")]
    pub grad_clip: Option<f64>,
    /// Weight of the cross-entropy term (the MSE term, summed over dimensions, has weight 1).
    pub ce_weight: f64,
    /// Weight of the MSE term (0 with a positive `ce_weight`: the paper's "CE only" ablation).
    pub mse_weight: f64,
    /// Min-SNR-γ weighting of the MSE over levels (see [`crate::loss::LossWeights`]); `false` in
    /// a config file (or `--min-snr off`) switches it off, as the paper's recipe has it.
    #[serde(deserialize_with = "off_or")]
    pub min_snr: Option<f64>,
    /// Share of a CDM's batch drawn at low levels (see [`crate::loss::level_prior`]); 0:
    /// uniform levels.
    pub low_levels: f64,
    /// Strides of the level subsets of a CDM's cross-entropy (see [`crate::loss::cdm_loss`]);
    /// empty: every level in every softmax.
    pub level_strides: Vec<usize>,
    /// Seed of every random draw in training.
    pub seed: u64,
    /// Steps between checkpoints (the last step is always saved).
    pub checkpoint_every: u64,
    /// Steps between lines of `log.jsonl`.
    pub log_every: u64,
    /// Precision of weights and data.
    pub precision: Precision,
    /// Steps between sample grids (`samples/step_N.png`, EMA weights, DDIM 50 steps) for image
    /// data; 0: none.
    pub sample_every: u64,
    /// For conditional models: the probability of training a sample with the null label, so
    /// the same network is also the unconditional model that classifier-free guidance needs.
    pub label_dropout: f64,
    /// Flip each image left-right with probability 1/2 (for [C, H, W] data).
    pub hflip: bool,
    /// Train on 8-bit images uniformly dequantized, (k + u)/128 − 1 with u ~ U(0, 1) drawn
    /// afresh each step: the density the bits/dim bound scores, rather than one concentrated on
    /// the grid (flat backgrounds at exactly −1).
    pub dequantize: bool,
    /// Add the contrastive diffusion loss (a DDM only; Wu et al. 2024, arXiv:2407.08946);
    /// none when absent.
    pub cdl: Option<CdlConfig>,
    /// A run directory whose EMA weights a fresh run starts from, with a fresh optimiser
    /// (fine-tuning, as the CDL paper does to a trained DDPM); none when absent.
    pub init_from: Option<PathBuf>,
    /// Steps between FIDs of `fid_samples` EMA samples (DDIM-50) against the training data's
    /// cached Inception statistics, written to `log.jsonl`; 0: none. For image data.
    pub fid_every: u64,
    /// Samples per periodic FID (and training images in its reference statistics).
    pub fid_samples: usize,
}

/// Reads an optional number that a TOML file (which has no null) switches off with `false`;
/// `true` is refused, a number or null (as `config.json` writes `None`) taken as is.
fn off_or<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OffOr {
        Flag(bool),
        Value(Option<f64>),
    }
    match OffOr::deserialize(d)? {
        OffOr::Flag(false) => Ok(None),
        OffOr::Flag(true) => Err(serde::de::Error::custom("expected a number, or false to switch it off")),
        OffOr::Value(v) => Ok(v),
    }
}

impl Default for TrainConfig {
    /// Settings that train the MLP presets on known densities; the paper's image settings are
    /// lr 2e-4, batch 128, 5k warm-up, EMA 0.9999 and a CE weight of 1e-3 against a per-dim MSE
    /// (≈ 3 against our summed MSE at D = 3072).
    fn default() -> Self {
        TrainConfig {
            steps: 5000,
            batch_size: 1024,
            lr: 1e-3,
            warmup_steps: 100,
            lr_decay: LrDecay::Cosine,
            ema_decay: 0.999,
            grad_clip: Some(1.0),
            ce_weight: 1.0,
            mse_weight: 1.0,
            min_snr: None,
            low_levels: 0.0,
            level_strides: Vec::new(),
            seed: 0,
            checkpoint_every: 1000,
            log_every: 50,
            precision: Precision::F32,
            sample_every: 0,
            label_dropout: 0.1,
            hflip: false,
            dequantize: false,
            cdl: None,
            init_from: None,
            fid_every: 0,
            fid_samples: 10_000,
        }
    }
}

impl TrainConfig {
    /// Image data ([C, H, W]) on the tiny UNet: the recipe of `make mnist` (docs/results.md
    /// §4.3), batch 32, lr 4e-4, Min-SNR-5, 2000 steps, a checkpoint and a sample grid every
    /// 500 steps. The known-density defaults (batch 1024) need 8 GB and minutes per step on MNIST.
    pub fn images() -> Self {
        TrainConfig {
            steps: 2000,
            batch_size: 32,
            lr: 4e-4,
            min_snr: Some(5.0),
            checkpoint_every: 500,
            sample_every: 500,
            ..TrainConfig::default()
        }
    }

    /// Vector data on the MLP: the known-density settings with half of each batch at the low
    /// levels, where the likelihood's error is made, and the cross-entropy weighted up, which
    /// learns the first log-ratio's edge faster (docs/results.md §9.2, §15).
    pub fn vectors() -> Self {
        TrainConfig { low_levels: VECTOR_LOW_LEVELS, ce_weight: VECTOR_CE_WEIGHT, ..TrainConfig::default() }
    }

    /// Learning rate at step `k` (0-based).
    pub fn lr_at(&self, k: u64) -> f64 {
        if k < self.warmup_steps {
            return self.lr * (k + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_decay {
            LrDecay::Constant => self.lr,
            LrDecay::Step { every, factor } => self.lr * factor.powi((k / every.max(1)) as i32),
            LrDecay::Cosine => {
                let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((k - self.warmup_steps) as f64 / span).min(1.0);
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("train.{field} {why}")));
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.checkpoint_every == 0 {
            return bad(
                "checkpoint_every",
                "must be at least 1 (the last step is always saved: a value above the steps saves only it)",
            );
        }
        if self.log_every == 0 {
            return bad("log_every", "must be at least 1");
        }
        if !(1..=1 << 20).contains(&self.batch_size) {
            return bad("batch_size", "must be in 1..=1048576");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("ema_decay", "must be in [0, 1)");
        }
        if self.ce_weight < 0.0 || !self.ce_weight.is_finite() {
            return bad("ce_weight", "must be a non-negative number");
        }
        if self.mse_weight < 0.0 || !self.mse_weight.is_finite() || self.ce_weight + self.mse_weight == 0.0 {
            return bad("mse_weight", "must be a non-negative number, and not zero together with ce_weight");
        }
        if self.min_snr.is_some_and(|g| !(g > 0.0 && g.is_finite())) {
            return bad("min_snr", "must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.low_levels) {
            return bad("low_levels", "must be a share in [0, 1]");
        }
        if self.level_strides.contains(&0) {
            return bad("level_strides", "must be positive");
        }
        if let LrDecay::Step { factor, .. } = self.lr_decay {
            if !(factor > 0.0 && factor.is_finite()) {
                return bad("lr_decay.factor", "must be a positive number");
            }
        }
        if self.grad_clip.is_some_and(|c| c <= 0.0) {
            return bad("grad_clip", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return bad("label_dropout", "must be a probability");
        }
        if self.fid_every > 0 && self.fid_samples < 2 {
            return bad("fid_samples", "must be at least 2 when fid_every is set");
        }
        self.cdl.as_ref().map_or(Ok(()), CdlConfig::validate)
    }
}

/// Share of a batch at the low levels on vector data by default (docs/results.md §15).
pub const VECTOR_LOW_LEVELS: f64 = 0.5;

/// Weight of a CDM's cross-entropy on vector data by default: 3 cut the cube's and the mixture's
/// likelihood error by 2-3× in the same steps, samples unchanged (docs/results.md §15.3).
pub const VECTOR_CE_WEIGHT: f64 = 3.0;

/// Fourier exponents of the MLP by default on data with hard edges (a uniform cube): octaves up
/// to 2^5π sharpen the log-density there, finer ones cost the input gradient more than they
/// give (docs/results.md §9.1, §15).
pub const EDGE_FOURIER: [i32; 6] = [0, 1, 2, 3, 4, 5];

/// What a fresh run gets where neither a config file nor a flag says otherwise: per data kind,
/// because the likelihood levers were measured to help a CDM on vector data (Fourier features
/// only where the density has hard edges) and to cost samples on images, where `low_levels`
/// starves the middle of 1000 levels (docs/results.md §15). Runs already saved keep their own settings, and a field missing
/// from an old `config.json` reads as the old default (levers off, T = 1000).
#[derive(Clone, Debug, PartialEq)]
pub struct DataDefaults {
    pub train: TrainConfig,
    pub schedule: ScheduleConfig,
    /// The MLP, when it is the network (chosen, or the default for vector data).
    pub mlp: MlpConfig,
}

impl DataDefaults {
    /// The defaults for a `kind` of model of `data`, [C, H, W] images or vectors; the levers are
    /// a CDM's, so a DDM keeps the settings it had.
    pub fn new(data: &Dataset, kind: ModelKind) -> Self {
        let shape = data.shape();
        let images = shape.len() == 3;
        if images || kind == ModelKind::Ddm {
            return DataDefaults {
                train: if images { TrainConfig::images() } else { TrainConfig::default() },
                schedule: ScheduleConfig::default(),
                mlp: MlpConfig::default(),
            };
        }
        let dim = shape.iter().product::<i64>().max(1) as usize;
        DataDefaults {
            train: TrainConfig::vectors(),
            schedule: ScheduleConfig::new(ScheduleKind::Linear, vector_levels(dim)),
            mlp: MlpConfig {
                fourier: if data.density().is_some_and(|d| d.hard_edges()) {
                    EDGE_FOURIER.to_vec()
                } else {
                    Vec::new()
                },
                ..MlpConfig::default()
            },
        }
    }
}

/// T for vector data of `dim` coordinates: the fewest levels whose neighbours still overlap,
/// 10 at D = 2 (docs/results.md §1), growing as √D because adjacent levels separate by √D times
/// their per-coordinate difference; but at least 50, the fewest whose sampler lands on the
/// modes (§9.2).
pub fn vector_levels(dim: usize) -> usize {
    let overlap = (10.0 * (dim as f64 / 2.0).sqrt()).ceil() as usize;
    overlap.clamp(50, 1000)
}

/// Everything a run needs; saved as `config.json` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Data spec (see `data::Dataset::open`).
    pub data: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    /// How `self` differs from `run` in what the run computes, one "field: value in the run,
    /// value here" each; its length and bookkeeping (steps, the intervals of checkpoints, log
    /// lines and sample grids) may change and are not compared.
    pub fn changes_from(&self, run: &RunConfig) -> Vec<String> {
        let computed = |c: &RunConfig| {
            let train = TrainConfig { steps: 0, checkpoint_every: 0, log_every: 0, sample_every: 0, ..c.train.clone() };
            serde_json::to_value(RunConfig { train, ..c.clone() }).unwrap_or_default()
        };
        let mut changes = Vec::new();
        differences("", &computed(run), &computed(self), &mut changes);
        changes
    }
}

/// Appends to `out` each leaf where `run` and `now` differ, named by its dotted path below
/// `path`.
fn differences(path: &str, run: &serde_json::Value, now: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (run, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let name = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                differences(&name, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if run != now => out.push(format!("{path}: {run} in the run, {now} here")),
        _ => {}
    }
}
