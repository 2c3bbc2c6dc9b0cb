//! The sampling flags that `cdm sample` and `cdm eval` share, turned into the library's
//! [`SampleOptions`].
use clap::Args;

use cdm::sample::{Conditioning, ParallelInit, ParallelOptions, ParallelSolver, SampleOptions, SamplerKind};

#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// Sampling steps (levels visited, from T down to 0).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM η (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Seed of the samples (and of every random draw of `cdm eval`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Conditional models: draw this class (default: every class in turn).
    #[arg(long)]
    class: Option<i64>,
    /// Classifier-free guidance weight w: ε = (1 + w) ε(x, c) − w ε(x, ∅).
    #[arg(long, default_value_t = 0.0)]
    guidance: f64,
    /// Clip x̂0 to [-C, C] at every step (images in [-1, 1]: 1).
    #[arg(long)]
    clip_x0: Option<f64>,
    /// Conditional models: sample with the null label (the unconditional model that label
    /// dropout trained alongside).
    #[arg(long, conflicts_with_all = ["class", "guidance"])]
    unconditional: bool,
    /// Parallel sampling: refine a window of P steps at once by fixed-point iteration
    /// (ParaDiGMS); each iteration evaluates P·batch states in one pass. For a deterministic
    /// sampler a window of about a third of the steps needs far fewer evaluations than one of
    /// all of them, in about as many iterations (DDIM-50 at P = 16: docs/results.md §13).
    #[arg(long, value_name = "P", value_parser = super::positive::<usize>)]
    pub parallel: Option<usize>,
    /// Parallel sampling: tolerance τ, in units of each step's noise standard deviation. The lever
    /// on evaluations: DDPM-1000 of a 2-D sample takes ≤ 32 iterations at ≤ 1.2× the evaluations at
    /// P = 44, τ = 0.3, samples as close as at 0.1 (docs/results.md §13.1).
    #[arg(long, default_value_t = 0.1)]
    tol: f64,
    /// Parallel sampling: plain Picard iteration, or with triangular Anderson acceleration.
    #[arg(long, value_enum, default_value = "picard")]
    solver: ParallelSolver,
    /// Parallel sampling with `--solver anderson`: iterates remembered.
    #[arg(long, default_value_t = 3)]
    history: usize,
    /// Parallel sampling: where the states of steps not yet refined start.
    #[arg(long, value_enum, default_value = "guess")]
    parallel_init: ParallelInit,
}

impl SamplingArgs {
    pub fn options(&self) -> SampleOptions {
        let conditioning = match (self.unconditional, self.class) {
            (true, _) => Conditioning::Unconditional,
            (false, Some(c)) => Conditioning::Class(c),
            (false, None) => Conditioning::Classes,
        };
        SampleOptions {
            sampler: self.sampler,
            steps: self.steps,
            eta: self.eta,
            seed: self.seed,
            conditioning,
            guidance: self.guidance,
            clip_x0: self.clip_x0,
            parallel: self.parallel.map(|window| ParallelOptions {
                window,
                tol: self.tol,
                solver: self.solver,
                history: self.history,
                init: self.parallel_init,
                trace: false,
            }),
        }
    }
}
