//! Evaluation of a trained model, the numbers `cdm eval` reports, each a function tested on a
//! case with a known answer (the exact model of Gaussian data): bits/dim by either likelihood
//! estimator, the denoising curve (the CDM paper's Fig. 5, Yadin et al. 2024,
//! arXiv:2402.10095), the level classifier's accuracy, cross-entropy, confusion and logit
//! profile (its Fig. 6), where a sampler takes the classifier, out-of-distribution scores
//! from one forward pass, and the MMD of samples. The command line only writes the report.
use tch::{Device, Kind, Tensor};

use crate::metrics::mmd::mmd2_unbiased;
use crate::model::Model;
use crate::sample::{draw, SampleOptions, SamplingStats};
use crate::{Error, Result};

pub mod classifier;
pub mod contrastive;
pub mod denoising;
pub mod likelihood;
pub mod ood;

pub use classifier::{level_classifier, logit_profile, sampler_drift, DriftRow, LevelMetrics};
pub use contrastive::{cdm_noise_classifier, exact_noise_classifier, noise_classifier, NoiseClassifierScore};
pub use denoising::{
    against_posterior_mean, denoise, denoising_levels, denoising_mse, posterior_mean_levels, predict_eps,
    PosteriorMeanRow,
};
pub use likelihood::{log_likelihood, nll_bits_per_dim, Estimator};
pub use ood::{level_log_densities, ood_levels, OodScores};

/// How points pass through a model: in chunks of `batch_size`, cast to the weights' kind and
/// moved to their device, so an evaluation of any size fits in memory.
pub struct Batches<'a> {
    /// Points per forward pass (at least 1).
    pub batch_size: usize,
    /// Kind of the model's weights.
    pub kind: Kind,
    /// Device of the model's weights.
    pub device: Device,
    /// Called after each chunk with (points done, points in all), for a progress bar.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

impl<'a> Batches<'a> {
    /// Chunks of `batch_size` for weights of `options` = (kind, device), without progress.
    pub fn new(batch_size: usize, options: (Kind, Device)) -> Self {
        Batches { batch_size, kind: options.0, device: options.1, progress: None }
    }

    /// Runs `f(chunk, start)` over chunks of `x` ([N, ..], N ≥ 1) and concatenates its results
    /// on the CPU.
    pub fn map(&self, x: &Tensor, mut f: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<Tensor> {
        let n = x.size()[0];
        if n == 0 {
            return Err(Error::Data("no points to evaluate".into()));
        }
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (self.batch_size.max(1) as i64).min(n - start);
            let chunk = x.narrow(0, start, len).to_kind(self.kind).to_device(self.device);
            parts.push(f(&chunk, start)?.to_device(Device::Cpu));
            start += len;
            if let Some(progress) = self.progress {
                progress(start as u64, n as u64);
            }
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

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
    /// With `opts.trace` (a parallel window of every step): the MMD² of the samples after each
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
    let drawn =
        draw(model, (batches.kind, batches.device), x.size()[0] as usize, opts, batches.batch_size, None, &mut |_| {})?;
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
