//! Models from run directories: building one in a run's precision, loading trained weights
//! for evaluation, and the weights a fine-tuning run starts from.
use std::path::Path;

use tch::{nn::VarStore, Device, Kind};

use super::{Precision, RunConfig};
use crate::base::VARIANCE_FLOOR;
use crate::checkpoint::{self, TensorFile};
use crate::data::Dataset;
use crate::likelihood::GaussianReference;
use crate::model::{Model, ModelConfig};
use crate::schedule::LogSnrProposal;
use crate::{Error, Result};

/// Data points a fresh run fits a Gaussian base to (all of them for a dataset on disk).
pub(crate) const BASE_FIT_POINTS: usize = 100_000;

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

    /// Evaluates in `precision` instead of the run's: the weights converted to its kind, the
    /// network under bf16 autocast for [`Precision::Bf16`].
    pub fn set_precision(&mut self, precision: Precision) {
        self.vs.set_kind(precision.kind());
        self.model.set_precision(precision);
        self.config.train.precision = precision;
    }
}

/// Builds a fresh classifier on `device` in the run's precision.
pub(crate) fn build(config: &RunConfig, device: Device) -> Result<(VarStore, Model)> {
    let mut vs = VarStore::new(device);
    let mut model = Model::new(&vs.root(), &config.model)?;
    vs.set_kind(config.train.precision.kind());
    model.set_precision(config.train.precision);
    Ok((vs, model))
}

/// The settings of the run in `dir`, if there is one: its `config.json`, written when it
/// starts, so that a run stopped before its first checkpoint resumes with them too.
pub fn saved_run(dir: &Path) -> Result<Option<RunConfig>> {
    let (config_path, _) = checkpoint::paths(dir);
    if !config_path.exists() {
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
    // A loaded model is only evaluated (sampling, likelihood, metrics). Without requires_grad
    // its forward passes record nothing for weight gradients, and a CDM's input gradient
    // computes only what reaches x_t.
    for (_, var) in vs.variables() {
        let _ = var.set_requires_grad(false);
    }
    let step = checkpoint_step(&file, &weights_path)?;
    Ok(LoadedModel { config, model, vs, step })
}

/// Copies the EMA weights of the run in `init` (its Gaussian base included) into `vs`: the
/// start of a fine-tuning run. The model must be the same but for how its levels are drawn
/// in training, so a DDM trained on integer levels can be fine-tuned on continuous ones.
pub(crate) fn init_weights(vs: &mut VarStore, config: &RunConfig, init: &Path) -> Result<()> {
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

pub(crate) fn checkpoint_step(file: &TensorFile, path: &Path) -> Result<u64> {
    let step = file.metadata.get("step").ok_or_else(|| Error::checkpoint(path, "metadata has no 'step'"))?;
    step.parse().map_err(|_| Error::checkpoint(path, format!("metadata 'step' is '{step}', not a number")))
}
