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
pub use draw::{draw, draw_from, time_windows, Conditioning, Latency, SampleOptions, Samples, SamplingStats, Start};
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

    /// One N(0, I) draw per sample: [n, ..shape].
    pub fn normal(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        self.steps(&[1.0], shape, kind, device).squeeze_dim(0)
    }

    /// The noise of k consecutive steps scaled by their standard deviations `stds`,
    /// [k, n, ..shape]: step i's rows are stds[i]·N(0, I) draws, zeros where stds[i] = 0 (a step
    /// that draws none). Each sample's stream gives its steps' values in step order, so this is
    /// [`Noise::normal`] called for each drawing step in turn, filled into one buffer on the
    /// host and uploaded as one tensor (not one small tensor per sample or step, stacked).
    pub fn steps(&mut self, stds: &[f64], shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let (per_sample, n) = (shape.iter().product::<i64>() as usize, self.streams.len());
        let mut values = vec![0.0; stds.len() * n * per_sample];
        let mut row = Vec::with_capacity(per_sample);
        for (s, stream) in self.streams.iter_mut().enumerate() {
            for (i, &std) in stds.iter().enumerate().filter(|(_, &std)| std > 0.0) {
                row.clear();
                stream.extend_normal(&mut row, per_sample);
                let at = (i * n + s) * per_sample;
                values[at..at + per_sample].iter_mut().zip(&row).for_each(|(v, z)| *v = std * z);
            }
        }
        let full_shape = [&[stds.len() as i64, n as i64][..], shape].concat();
        crate::device::host_tensor(&values, &full_shape, kind, device)
    }
}

/// What a sampler reports after each step. A parallel sampler reports a block of converged
/// steps at once, so the step's tensors are rows of the block's, selected only when asked for:
/// most listeners (a progress bar) need the index alone, and a selection per step would be an
/// operation per step.
pub struct Step<'a> {
    /// Step index, from 0.
    pub i: usize,
    /// The level just left.
    pub t: usize,
    /// The states after a block of steps [k, n, ..] and their x̂0, of which this step is `row`.
    states: &'a Tensor,
    x0s: &'a Tensor,
    row: i64,
}

impl<'a> Step<'a> {
    /// Step `i` from level `t`, row `row` of the block `states` with denoised estimates `x0s`.
    pub(crate) fn new(i: usize, t: usize, states: &'a Tensor, x0s: &'a Tensor, row: i64) -> Self {
        Step { i, t, states, x0s, row }
    }

    /// The state after the step: [n, ..]. A copy, as [`Step::x0`] is: a sampler's block is a
    /// view of buffers that its next step overwrites, or an inference tensor
    /// ([`crate::inference_mode`]), and a copy made here is neither.
    pub fn x_t(&self) -> Tensor {
        self.states.get(self.row).copy()
    }

    /// The denoised estimate x̂0 at level `t`: [n, ..], a copy.
    pub fn x0(&self) -> Tensor {
        self.x0s.get(self.row).copy()
    }
}
