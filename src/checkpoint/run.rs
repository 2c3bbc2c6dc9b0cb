//! Trained models from run directories: a model built in its run's precision with the
//! checkpoint's weights, and the settings it was trained with.
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind};

use super::TensorFile;
use crate::model::Model;
use crate::precision::Precision;
use crate::train::RunConfig;
use crate::{Error, Result};

/// A model, the VarStore that owns its weights, and the run settings it came from.
pub struct LoadedModel {
    /// The run folder it was loaded from.
    pub dir: PathBuf,
    /// The EMA weights (the default for evaluation), not the raw ones.
    pub ema: bool,
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

    /// The run folder's name, for tables and legends.
    pub fn name(&self) -> String {
        let dir = &self.dir;
        dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// Evaluates in `precision` instead of the run's: the weights converted to its kind, the
    /// network under bf16 autocast for [`Precision::Bf16`].
    pub fn set_precision(&mut self, precision: Precision) {
        self.vs.set_kind(precision.kind());
        self.model.set_precision(precision);
        self.config.train.precision = precision;
    }
}

/// Held while a model is built: tch's initialisers draw from libtorch's global generator, so a
/// build beside a seeded one would change what the seeded one draws.
static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds a fresh model on `device` in the run's precision (its weights drawn from libtorch's
/// global generator as it stands).
pub(crate) fn build(config: &RunConfig, device: Device) -> Result<(VarStore, Model)> {
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    build_unlocked(config, device)
}

/// Two models built as [`build`] builds, after seeding the global generator with `seed`, with
/// no other build between: a run's model and its EMA copy, reproducible from the config alone.
pub(crate) fn build_seeded_pair(config: &RunConfig, device: Device, seed: u64) -> Result<[(VarStore, Model); 2]> {
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    Ok([build_unlocked(config, device)?, build_unlocked(config, device)?])
}

fn build_unlocked(config: &RunConfig, device: Device) -> Result<(VarStore, Model)> {
    let mut vs = VarStore::new(device);
    let mut model = Model::new(&vs.root(), &config.model)?;
    vs.set_kind(config.train.precision.kind());
    model.set_precision(config.train.precision);
    Ok((vs, model))
}

/// The settings of the run in `dir`, if there is one: its `config.json`, written when it
/// starts, so that a run stopped before its first checkpoint resumes with them too.
pub fn saved_run(dir: &Path) -> Result<Option<RunConfig>> {
    let (config_path, _) = super::paths(dir);
    if !config_path.exists() {
        return Ok(None);
    }
    super::read_json(&config_path).map(Some)
}

/// Loads a trained model from a run directory; `ema` picks the EMA weights (the default for
/// evaluation) over the raw ones.
pub fn load_model(dir: &Path, device: Device, ema: bool) -> Result<LoadedModel> {
    let (config_path, weights_path) = super::paths(dir);
    let config: RunConfig = super::read_json(&config_path)?;
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
    let step = step_of(&file, &weights_path)?;
    Ok(LoadedModel { dir: dir.to_path_buf(), ema, config, model, vs, step })
}

pub(crate) fn step_of(file: &TensorFile, path: &Path) -> Result<u64> {
    let step = file.metadata.get("step").ok_or_else(|| Error::checkpoint(path, "metadata has no 'step'"))?;
    step.parse().map_err(|_| Error::checkpoint(path, format!("metadata 'step' is '{step}', not a number")))
}
