//! Training a classification diffusion model (Yadin et al. 2024, arXiv:2402.10095,
//! Algorithm 1), or its DDM baseline: Adam with warm-up and decay, EMA weights, optional gradient clipping,
//! atomic checkpoints and exact resume (each step's randomness is derived from the seed and
//! the step number, and the optimiser state is saved).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::base::VARIANCE_FLOOR;
use crate::checkpoint::{self, TensorFile};
use crate::data::Dataset;
use crate::likelihood::GaussianReference;
use crate::loss::{CdlConfig, LossWeights};
use crate::model::{Model, ModelConfig, ModelKind};
use crate::plot::image_grid;
use crate::rng::Rng;
use crate::sample::{draw, SampleOptions};
use crate::schedule::LogSnrProposal;
use crate::{Error, Result};

/// Floating-point precision of weights and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F64 => Kind::Double,
        }
    }
}

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
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Weight of the cross-entropy term (the MSE term, summed over dimensions, has weight 1).
    pub ce_weight: f64,
    /// Weight of the MSE term (0 with a positive `ce_weight`: the paper's "CE only" ablation).
    pub mse_weight: f64,
    /// Min-SNR-γ weighting of the MSE over levels (see [`LossWeights`]); none when absent.
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
    /// Add the contrastive diffusion loss (a DDM only; Wu et al. 2024, arXiv:2407.08946);
    /// none when absent.
    pub cdl: Option<CdlConfig>,
    /// A run directory whose EMA weights a fresh run starts from, with a fresh optimiser
    /// (fine-tuning, as the CDL paper does to a trained DDPM); none when absent.
    pub init_from: Option<PathBuf>,
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
            cdl: None,
            init_from: None,
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
        self.cdl.as_ref().map_or(Ok(()), CdlConfig::validate)
    }
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

/// Losses of one step, for progress display and the log.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    /// The CDM's cross-entropy (absent for a DDM).
    pub ce: Option<f64>,
    pub mse: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// The contrastive diffusion loss, when training with it (ln 2 is chance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdl: Option<f64>,
    /// How often its noise classifier told kept from noised points in this batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdl_accuracy: Option<f64>,
}

/// Adam (Kingma & Ba 2015) with its moments kept as named tensors, so they checkpoint.
struct Adam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

impl Adam {
    fn new(params: &[(String, Tensor)]) -> Self {
        let zeros = || params.iter().map(|(_, p)| p.zeros_like()).collect();
        Adam { m: zeros(), v: zeros() }
    }

    /// One update with step number `k` (1-based, for bias correction) and gradients scaled by `scale`.
    fn update(&mut self, params: &[(String, Tensor)], lr: f64, k: u64, scale: f64) {
        let (b1, b2) = ADAM_BETAS;
        let (c1, c2) = (1.0 - b1.powi(k as i32), 1.0 - b2.powi(k as i32));
        tch::no_grad(|| {
            // In-place updates: one kernel per moment, one for the weight.
            for ((_, p), (m, v)) in params.iter().zip(self.m.iter_mut().zip(self.v.iter_mut())) {
                let g = if scale == 1.0 { p.grad() } else { p.grad() * scale };
                let _ = m.lerp_(&g, 1.0 - b1);
                let _ = v.lerp_(&g.square(), 1.0 - b2);
                let denominator = (&*v / c2).sqrt() + ADAM_EPS;
                let _ = p.shallow_clone().g_sub_(&(&*m / denominator * (lr / c1)));
            }
        });
    }
}

/// Trained variables of `vs` (not a Gaussian base's statistics) sorted by name, so every
/// traversal has one fixed order.
fn trained_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<_> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Data points a fresh run fits a Gaussian base to (all of them for a dataset on disk).
const BASE_FIT_POINTS: usize = 100_000;

/// Where a DDM on continuous levels of `data` is trained: the CDL code's truncated logistic
/// from the per-dimension variances of the points a base would be fitted to (floored like
/// the base's, so a never-varying pixel does not send log λ to −∞).
pub fn data_logsnr_proposal(data: &Dataset, seed: u64) -> Result<LogSnrProposal> {
    let reference = GaussianReference::fit(&data.eval_points(BASE_FIT_POINTS, seed), VARIANCE_FLOOR);
    LogSnrProposal::from_variances(&Vec::<f64>::try_from(&reference.var)?)
}

/// A model, the VarStore that owns its weights, and the run settings it came from.
pub struct LoadedModel {
    pub config: RunConfig,
    pub model: Model,
    pub vs: VarStore,
    /// Optimiser steps taken.
    pub step: u64,
}

impl LoadedModel {
    /// The precision and device of its weights, where its inputs must go.
    pub fn options(&self) -> (Kind, Device) {
        (self.config.train.precision.kind(), self.vs.device())
    }
}

/// Builds a fresh classifier on `device` in the run's precision.
fn build(config: &RunConfig, device: Device) -> Result<(VarStore, Model)> {
    let mut vs = VarStore::new(device);
    let model = Model::new(&vs.root(), &config.model)?;
    vs.set_kind(config.train.precision.kind());
    Ok((vs, model))
}

/// The settings of the run already checkpointed in `dir`, if there is one.
pub fn saved_run(dir: &Path) -> Result<Option<RunConfig>> {
    let (config_path, weights_path) = checkpoint::paths(dir);
    if !weights_path.exists() {
        return Ok(None);
    }
    checkpoint::read_json(&config_path).map(Some)
}

/// Loads a trained model from a run directory; `ema` picks the EMA weights (the default for
/// evaluation) over the raw ones.
pub fn load_model(dir: &Path, device: Device, ema: bool) -> Result<LoadedModel> {
    let (config_path, weights_path) = checkpoint::paths(dir);
    let config: RunConfig = checkpoint::read_json(&config_path)?;
    config.model.validate().map_err(|e| Error::checkpoint(&config_path, e.to_string()))?;
    let file = TensorFile::load(&weights_path)?;
    let (mut vs, model) = build(&config, device)?;
    file.load_vars(if ema { "ema" } else { "model" }, &mut vs, &weights_path)?;
    let step = checkpoint_step(&file, &weights_path)?;
    Ok(LoadedModel { config, model, vs, step })
}

/// Copies the EMA weights of the run in `init` (its Gaussian base included) into `vs`: the
/// start of a fine-tuning run. The model must be the same but for how its levels are drawn
/// in training, so a DDM trained on integer levels can be fine-tuned on continuous ones.
fn init_weights(vs: &mut VarStore, config: &RunConfig, init: &Path) -> Result<()> {
    let (config_path, weights_path) = checkpoint::paths(init);
    let source: RunConfig = checkpoint::read_json(&config_path)?;
    let same_levels = |m: &ModelConfig| {
        let mut m = m.clone();
        m.schedule.levels = Default::default();
        m
    };
    if same_levels(&source.model) != same_levels(&config.model) {
        return Err(Error::Config(format!(
            "--init-from {}: its model differs from this run's (only the training levels may change)",
            init.display()
        )));
    }
    TensorFile::load(&weights_path)?.load_vars("ema", vs, &weights_path)
}

fn checkpoint_step(file: &TensorFile, path: &Path) -> Result<u64> {
    let step = file.metadata.get("step").ok_or_else(|| Error::checkpoint(path, "metadata has no 'step'"))?;
    step.parse().map_err(|_| Error::checkpoint(path, format!("metadata 'step' is '{step}', not a number")))
}

/// A training run in a directory: created fresh, or resumed from the checkpoint there.
pub struct Trainer {
    pub config: RunConfig,
    dir: PathBuf,
    data: Dataset,
    device: Device,
    vs: VarStore,
    model: Model,
    ema_vs: VarStore,
    /// The model with the EMA weights, for the periodic sample grids.
    ema_model: Model,
    adam: Adam,
    step: u64,
}

impl Trainer {
    /// Starts a run in `dir`, or resumes the one there. A run is resumed only with the same
    /// settings; only `train.steps` (to extend a finished run) and the intervals of
    /// checkpoints, log lines and sample grids may change.
    pub fn open(dir: &Path, config: RunConfig, device: Device) -> Result<Self> {
        let data = Dataset::open(&config.data)?;
        Self::open_with_data(dir, config, data, device)
    }

    /// [`Trainer::open`] with the data already opened from `config.data`.
    pub fn open_with_data(dir: &Path, config: RunConfig, data: Dataset, device: Device) -> Result<Self> {
        config.train.validate()?;
        if data.shape() != config.model.data_shape {
            return Err(Error::Config(format!(
                "model.data_shape {:?} does not match the data's shape {:?}",
                config.model.data_shape,
                data.shape()
            )));
        }
        let num_labels = config.model.backbone.num_labels();
        match data.num_labels() {
            _ if num_labels == 0 => {}
            None => {
                return Err(Error::Config(format!(
                    "a conditional model needs labelled data; '{}' has none",
                    config.data
                )))
            }
            Some(n) if n > num_labels => {
                return Err(Error::Config(format!("the data has {n} labels, the model was built for {num_labels}")))
            }
            Some(_) => {}
        }
        if config.train.hflip && config.model.data_shape.len() != 3 {
            return Err(Error::Config("train.hflip needs image data [C, H, W]".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (config_path, weights_path) = checkpoint::paths(dir);
        // tch's initialisers draw from libtorch's global generator: seed it (under a lock, as
        // other threads may build models too), so a run is reproducible from its config alone.
        let (mut vs, model, (mut ema_vs, ema_model)) = {
            static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(config.train.seed as i64);
            let (vs, model) = build(&config, device)?;
            (vs, model, build(&config, device)?)
        };
        let saved = saved_run(dir)?;
        match (&saved, &config.train.init_from) {
            // A resumed run restores its weights and base from the checkpoint below.
            (Some(_), _) => {}
            (None, Some(init)) => init_weights(&mut vs, &config, init)?,
            (None, None) => {
                if let Some(base) = model.base() {
                    base.fit(&data.eval_points(BASE_FIT_POINTS, config.train.seed), data.labels())?;
                }
            }
        }
        if config.train.cdl.is_some() && config.model.kind != ModelKind::Ddm {
            return Err(Error::Config("the contrastive diffusion loss is for a DDM (--model ddm)".into()));
        }
        ema_vs.copy(&vs)?;
        let adam = Adam::new(&trained_vars(&vs));
        let mut trainer =
            Trainer { config, dir: dir.to_path_buf(), data, device, vs, model, ema_vs, ema_model, adam, step: 0 };
        if let Some(saved) = saved {
            // What a run computes must match; its length and bookkeeping may change.
            let comparable = |c: &RunConfig| RunConfig {
                train: TrainConfig { steps: 0, checkpoint_every: 0, log_every: 0, sample_every: 0, ..c.train.clone() },
                ..c.clone()
            };
            if comparable(&saved) != comparable(&trainer.config) {
                return Err(Error::Config(format!(
                    "{} holds a run with other settings; resume it with the same settings or choose another --out",
                    dir.display()
                )));
            }
            trainer.restore(&weights_path)?;
        }
        checkpoint::write_json(&config_path, &trainer.config)?;
        Ok(trainer)
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let file = TensorFile::load(path)?;
        file.load_vars("model", &mut self.vs, path)?;
        file.load_vars("ema", &mut self.ema_vs, path)?;
        let names = trained_vars(&self.vs);
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in names.iter().enumerate() {
                self.adam.m[i].f_copy_(file.get(&format!("adam_m/{name}"), path)?)?;
                self.adam.v[i].f_copy_(file.get(&format!("adam_v/{name}"), path)?)?;
            }
            Ok(())
        })?;
        self.step = checkpoint_step(&file, path)?;
        Ok(())
    }

    /// A training batch on the device: augmented images, and labels (some of them dropped to
    /// the null label) for a conditional model.
    fn batch(&self, rng: &mut Rng) -> (Tensor, Option<Tensor>) {
        let cfg = &self.config.train;
        let (mut x0, labels) = self.data.batch(cfg.batch_size, rng);
        let n = x0.size()[0];
        if cfg.hflip {
            let flip = rng.uniform(&[n], Kind::Double).lt(0.5).reshape([n, 1, 1, 1]);
            x0 = x0.flip([3]).where_self(&flip, &x0);
        }
        let num_labels = self.config.model.backbone.num_labels() as i64;
        let labels = labels.filter(|_| num_labels > 0).map(|l| {
            let drop = rng.uniform(&[n], Kind::Double).lt(cfg.label_dropout);
            l.where_self(&drop.logical_not(), &Tensor::from(num_labels)).to_device(self.device)
        });
        (x0.to_kind(cfg.precision.kind()).to_device(self.device), labels)
    }

    /// Writes `samples/step_N.png`: 16 DDIM-50 samples from the EMA weights (a conditional
    /// model cycles through its classes), from a fixed seed so grids compare across steps.
    fn sample_grid(&self) -> Result<()> {
        let dir = self.dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let opts = SampleOptions::ddim(50.min(self.ema_model.schedule().timesteps()));
        let options = (self.config.train.precision.kind(), self.device);
        let samples = draw(&self.ema_model, options, 16, &opts, 16, None, &mut |_| {})?;
        image_grid(&dir.join(format!("step_{}.png", self.step)), &samples.x, 4)
    }

    /// Steps already taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model with its raw (non-EMA) weights.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Writes the checkpoint for the current step.
    pub fn save(&self) -> Result<()> {
        let mut file = TensorFile::default();
        file.insert_vars("model", &self.vs);
        file.insert_vars("ema", &self.ema_vs);
        for ((name, _), (m, v)) in trained_vars(&self.vs).iter().zip(self.adam.m.iter().zip(&self.adam.v)) {
            file.tensors.insert(format!("adam_m/{name}"), m.to_device(Device::Cpu));
            file.tensors.insert(format!("adam_v/{name}"), v.to_device(Device::Cpu));
        }
        file.metadata.insert("step".into(), self.step.to_string());
        file.save(&checkpoint::paths(&self.dir).1)
    }

    /// Trains up to `train.steps`, calling `on_step` after every step. A non-finite loss or
    /// gradient stops training with an error and leaves the last checkpoint in place.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepReport)) -> Result<()> {
        self.run_until(self.config.train.steps, on_step)
    }

    /// Trains up to step `stop` (at most `train.steps`) and stops as an interrupted run would:
    /// only the periodic checkpoints are written before the last step.
    pub fn run_until(&mut self, stop: u64, on_step: &mut dyn FnMut(&StepReport)) -> Result<()> {
        let cfg = self.config.train.clone();
        let stop = stop.min(cfg.steps);
        let params = trained_vars(&self.vs);
        let ema_params = trained_vars(&self.ema_vs);
        let log_path = self.dir.join("log.jsonl");
        let mut log = LogFile::open(&log_path, self.step)?;
        while self.step < stop {
            let k = self.step;
            let mut rng = Rng::stream(cfg.seed, k);
            let (x0, labels) = self.batch(&mut rng);
            let loss = self.model.loss(
                &x0,
                labels.as_ref(),
                LossWeights {
                    ce: cfg.ce_weight,
                    mse: cfg.mse_weight,
                    min_snr: cfg.min_snr,
                    cdl: cfg.cdl,
                    low_levels: cfg.low_levels,
                    level_strides: cfg.level_strides.clone(),
                },
                &mut rng,
            )?;
            let total = loss.total.double_value(&[]);
            if !total.is_finite() {
                return Err(Error::NonFinite { step: k, what: format!("loss = {total}") });
            }
            for (_, p) in &params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
            loss.total.backward();
            let grad_norm = params
                .iter()
                .map(|(_, p)| p.grad().square().sum(Kind::Double))
                .fold(Tensor::from(0.0), |a, b| a + b)
                .sqrt()
                .double_value(&[]);
            if !grad_norm.is_finite() {
                return Err(Error::NonFinite { step: k, what: format!("gradient norm = {grad_norm}") });
            }
            let scale = cfg.grad_clip.map_or(1.0, |c| (c / grad_norm).min(1.0));
            let lr = cfg.lr_at(k);
            self.adam.update(&params, lr, k + 1, scale);
            let decay = cfg.ema_decay.min((1.0 + k as f64) / (10.0 + k as f64));
            tch::no_grad(|| {
                for ((_, e), (_, p)) in ema_params.iter().zip(&params) {
                    let _ = e.shallow_clone().lerp_(p, 1.0 - decay);
                }
            });
            self.step += 1;
            let report = StepReport {
                step: self.step,
                loss: total,
                ce: loss.ce.map(|ce| ce.double_value(&[])),
                mse: loss.mse.double_value(&[]),
                lr,
                grad_norm,
                cdl: loss.cdl.as_ref().map(|c| c.loss.double_value(&[])),
                cdl_accuracy: loss.cdl.as_ref().map(|c| c.accuracy),
            };
            if self.step.is_multiple_of(cfg.log_every.max(1)) || self.step == cfg.steps {
                log.append(&report)?;
            }
            if self.step.is_multiple_of(cfg.checkpoint_every.max(1)) || self.step == cfg.steps {
                if let Some((name, _)) = params.iter().find(|(_, p)| p.isfinite().all().int64_value(&[]) == 0) {
                    return Err(Error::NonFinite {
                        step: self.step,
                        what: format!("weight '{name}' after the update"),
                    });
                }
                self.save()?;
            }
            if cfg.sample_every > 0
                && self.step.is_multiple_of(cfg.sample_every)
                && self.config.model.data_shape.len() == 3
            {
                self.sample_grid()?;
            }
            on_step(&report);
        }
        Ok(())
    }
}

/// `log.jsonl`: one JSON line per logged step. On resume, lines past the checkpoint are dropped
/// so the log matches an uninterrupted run.
struct LogFile {
    path: PathBuf,
    lines: Vec<String>,
}

impl LogFile {
    fn open(path: &Path, step: u64) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let lines = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(String::from)
            .collect();
        Ok(LogFile { path: path.to_path_buf(), lines })
    }

    fn append(&mut self, report: &StepReport) -> Result<()> {
        self.lines.push(serde_json::to_string(report).unwrap_or_default());
        checkpoint::write_atomic(&self.path, (self.lines.join("\n") + "\n").as_bytes())
    }
}
