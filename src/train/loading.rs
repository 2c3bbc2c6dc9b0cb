//! What a run starts from: the levels a continuous-level DDM draws from its data, and the
//! weights a fine-tuning run starts from.
use std::path::Path;

use tch::nn::VarStore;

use super::RunConfig;
use crate::base::VARIANCE_FLOOR;
use crate::checkpoint::{self, TensorFile};
use crate::data::Dataset;
use crate::likelihood::GaussianReference;
use crate::model::ModelConfig;
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
