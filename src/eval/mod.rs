//! Evaluation of a trained model, the numbers `cdm eval` reports, each a function tested on a
//! case with a known answer (the exact model of Gaussian data): bits/dim by either likelihood
//! estimator, the denoising curve (the CDM paper's Fig. 5, Yadin et al. 2024,
//! arXiv:2402.10095), the level classifier's accuracy, cross-entropy, confusion and logit
//! profile (its Fig. 6), where a sampler takes the classifier, out-of-distribution scores
//! from one forward pass, and the MMD of samples; [`evaluate`] puts them together into a typed
//! [`Report`], which the command line only writes.
use tch::{Device, Kind, Tensor};

use crate::metrics::mmd::mmd2_unbiased;
use crate::model::Model;
use crate::sample::{draw, SampleOptions, SamplingStats};
use crate::Result;

pub mod classifier;
pub mod contrastive;
pub mod denoising;
pub mod evaluate;
pub mod likelihood;
pub mod ood;
pub mod report;

pub use classifier::{level_classifier, logit_profile, sampler_drift, DriftRow, LevelMetrics};
pub use contrastive::{cdm_noise_classifier, exact_noise_classifier, noise_classifier, NoiseClassifierScore};
pub use denoising::{
    against_posterior_mean, denoise, denoising_levels, denoising_mse, posterior_mean_levels, predict_eps,
    PosteriorMeanRow,
};
pub use evaluate::{evaluate, evaluate_in_job, Plan, Stream};
pub use likelihood::{
    log_likelihood, nll_bits_per_dim, score_points, Estimator, NllReport, PointScores, PointsToScore,
};
pub use ood::{level_log_densities, ood_levels, OodScores};
pub use report::{Metric, Report};

pub use crate::batches::Batches;

/// The first `n` rows of `x`.
pub fn first(x: &Tensor, n: usize) -> Tensor {
    x.narrow(0, 0, (n as i64).min(x.size()[0]))
}

/// Values per data point, D, of a batch `x` [N, ..].
pub fn dim_of(x: &Tensor) -> f64 {
    x.size()[1..].iter().product::<i64>() as f64
}

/// Sample quality by MMD², and what the samples cost.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleMmd {
    pub mmd2: f64,
    pub cost: SamplingStats,
    /// With a parallel run's `trace` (a window of every step): the MMD² of the samples after each
    /// iteration, the quality an iteration budget buys; the last is `mmd2`.
    pub per_iteration: Vec<f64>,
}

/// Unbiased MMD² ([`mmd2_unbiased`], Gaussian kernel of bandwidth `bandwidth`) between as
/// many samples of `model`, drawn as `opts` says, as there are held-out points `x` ([N, D]).
pub fn samples_mmd(
    model: &Model,
    x: &Tensor,
    opts: &SampleOptions,
    bandwidth: f64,
    batches: &Batches,
) -> Result<SampleMmd> {
    let drawn = draw(model, x.size()[0] as usize, opts, batches)?;
    let per_iteration = drawn.trace.iter().map(|y| mmd2_unbiased(y, x, bandwidth)).collect::<Result<Vec<_>>>()?;
    Ok(SampleMmd {
        mmd2: mmd2_unbiased(&drawn.x.to_device(Device::Cpu), x, bandwidth)?,
        cost: drawn.stats,
        per_iteration,
    })
}

/// The mean of a tensor, in f64.
pub(crate) fn mean(t: &Tensor) -> f64 {
    t.mean(Kind::Double).double_value(&[])
}
