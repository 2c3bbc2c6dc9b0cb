//! Samplers: functions from x_T ~ N(0, I) to x_0 through a [`crate::predictor::NoisePredictor`],
//! over a decreasing grid of levels (see `Schedule::sampling_levels`). They never know whether
//! ε̂ comes from a denoiser or from a classifier's input gradient. Every sampler's update is
//! written once ([`steps`]); the sequential loop ([`sequential`]) and parallel fixed-point
//! iteration ([`parallel`]) both take it, and [`draw`] is the one entry point for a model.
use tch::{Device, Kind, Tensor};

use crate::rng::Rng;

pub mod clip;
pub mod draw;
pub mod guidance;
pub mod parallel;
pub mod sequential;
pub mod steps;

pub use clip::ClipX0;
pub use draw::{draw, time_window, SampleOptions, Samples, SamplingStats, Start};
pub use guidance::{Guided, GuidedPair};
pub use parallel::{parallel, ParallelInit, ParallelOptions, ParallelRun, ParallelSolver, ParallelStats};
pub use sequential::{ddim, ddpm, dpm_solver_2m, dpm_solver_pp_2m, sequential, DdimOptions};
pub use steps::StepTable;

/// Which sampler the command line runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral sampling (Ho et al. 2020) with the exact posterior variance of strided steps.
    Ddpm,
    /// DDIM (Song et al. 2021), deterministic at eta = 0.
    Ddim,
    /// DPM-Solver, second-order multistep, noise form (Lu et al. 2022).
    Dpm2,
    /// DPM-Solver++(2M), data form (Lu et al. 2022).
    Dpmpp2m,
}

/// Fresh Gaussian noise with one seeded stream per sample, so a sample does not depend on the
/// batch it was drawn in.
pub struct Noise {
    streams: Vec<Rng>,
}

impl Noise {
    /// Streams for samples `first..first + n` of seed `seed`.
    pub fn new(seed: u64, first: u64, n: usize) -> Self {
        Noise { streams: (0..n as u64).map(|i| Rng::stream(seed, first + i)).collect() }
    }

    /// One N(0, I) draw per sample: [n, ..shape]. Each sample's stream fills its own rows of
    /// one buffer, uploaded as one tensor (not one small tensor per sample, stacked).
    pub fn normal(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let per_sample = shape.iter().product::<i64>() as usize;
        let mut values = Vec::with_capacity(per_sample * self.streams.len());
        for stream in &mut self.streams {
            stream.extend_normal(&mut values, per_sample);
        }
        let full_shape = [&[self.streams.len() as i64][..], shape].concat();
        Tensor::from_slice(&values).reshape(full_shape).to_kind(kind).to_device(device)
    }
}

/// What a sampler reports after each step.
pub struct Step<'a> {
    /// Step index, from 0.
    pub i: usize,
    /// The level just left.
    pub t: usize,
    /// The state after the step.
    pub x_t: &'a Tensor,
    /// The denoised estimate x̂0 at level `t`.
    pub x0: &'a Tensor,
}
