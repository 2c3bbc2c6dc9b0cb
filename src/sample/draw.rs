//! Sampling a model, the one entry point that the command line, the training grids and the
//! evaluation all call: labels, classifier-free guidance and x̂0 clipping stacked into one
//! predictor, per-sample seeding (a sample does not depend on the batch it was drawn in),
//! batching, and the choice between a sequential and a parallel run.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::{
    parallel, sequential, ClipX0, GuidedPair, Noise, ParallelInit, ParallelOptions, ParallelSolver, SamplerKind, Step,
    StepTable,
};
use crate::model::Model;
use crate::predictor::{Conditioned, NoisePredictor};
use crate::schedule::levels_like;
use crate::{Error, Result};

/// How to draw samples (the `cdm sample` flags, shared by `cdm eval`).
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct SampleOptions {
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// Sampling steps (levels visited, from T down to 0).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM η (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Conditional models: draw this class (default: every class in turn).
    #[arg(long)]
    pub class: Option<i64>,
    /// Classifier-free guidance weight w: ε = (1 + w) ε(x, c) − w ε(x, ∅).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Clip x̂0 to [-C, C] at every step (images in [-1, 1]: 1).
    #[arg(long)]
    pub clip_x0: Option<f64>,
    /// Conditional models: sample with the null label (the unconditional model that label
    /// dropout trained alongside).
    #[arg(long, conflicts_with_all = ["class", "guidance"])]
    pub unconditional: bool,
    /// Parallel sampling: refine a window of P steps at once by fixed-point iteration
    /// (ParaDiGMS); each iteration evaluates P·batch states in one pass. For a deterministic
    /// sampler a window of about a third of the steps needs far fewer evaluations than one of
    /// all of them, in about as many iterations (DDIM-50 at P = 16: docs/results.md §13).
    #[arg(long, value_name = "P")]
    pub parallel: Option<usize>,
    /// Parallel sampling: tolerance τ, in units of each step's noise standard deviation.
    #[arg(long, default_value_t = 0.1)]
    pub tol: f64,
    /// Parallel sampling: plain Picard iteration, or with triangular Anderson acceleration.
    #[arg(long, value_enum, default_value = "picard")]
    pub solver: ParallelSolver,
    /// Parallel sampling with `--solver anderson`: iterates remembered.
    #[arg(long, default_value_t = 3)]
    pub history: usize,
    /// Parallel sampling: where the states of steps not yet refined start.
    #[arg(long, value_enum, default_value = "guess")]
    pub parallel_init: ParallelInit,
    /// Parallel sampling: keep the samples each iteration budget would give (a window of every
    /// step); set by commands that score quality per iteration.
    #[arg(skip)]
    #[serde(skip)]
    pub trace: bool,
}

impl SampleOptions {
    /// Sequential DDPM with `steps` steps, unconditional, seed 1.
    pub fn ddpm(steps: usize) -> Self {
        SampleOptions { sampler: SamplerKind::Ddpm, steps, seed: 1, ..SampleOptions::ddim(steps) }
    }

    /// Sequential deterministic DDIM with `steps` steps, seed 0.
    pub fn ddim(steps: usize) -> Self {
        SampleOptions {
            sampler: SamplerKind::Ddim,
            steps,
            eta: 0.0,
            seed: 0,
            class: None,
            guidance: 0.0,
            clip_x0: None,
            unconditional: false,
            parallel: None,
            tol: 0.1,
            solver: ParallelSolver::Picard,
            history: 3,
            parallel_init: ParallelInit::Guess,
            trace: false,
        }
    }
}

/// Where a sampling run begins when not at pure noise: states `x_t` [n, ..] at `level`, and the
/// labels of the points they came from.
pub struct Start {
    pub x_t: Tensor,
    pub level: usize,
    pub labels: Option<Vec<i64>>,
}

impl Start {
    /// SDEdit (Meng et al., arXiv:2108.01073): data points `x0` [n, ..] noised to `level`
    /// (1..=T) with the starting-point streams of `seed`, and their labels.
    pub fn sdedit(model: &Model, x0: &Tensor, labels: Option<&Tensor>, level: usize, seed: u64) -> Result<Self> {
        let schedule = model.schedule();
        if level == 0 || level > schedule.timesteps() {
            return Err(Error::Config(format!(
                "the starting level must be in 1..={}, got {level}",
                schedule.timesteps()
            )));
        }
        model.check_input(x0)?;
        let x0 = x0.to_kind(Kind::Double).to_device(Device::Cpu);
        let eps = Noise::new(seed, 0, x0.size()[0] as usize).normal(&x0.size()[1..], Kind::Double, Device::Cpu);
        let x_t = schedule.add_noise(&x0, &eps, &levels_like(level, &x0));
        let labels = labels.map(|l| Vec::<i64>::try_from(l.to_kind(Kind::Int64).to_device(Device::Cpu))).transpose()?;
        Ok(Start { x_t, level, labels })
    }
}

/// What a sampling run cost, summed over its batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SamplingStats {
    /// Sampler steps per trajectory.
    pub steps: usize,
    /// Batches the samples were drawn in.
    pub batches: usize,
    /// Rounds of network evaluation (a sequential run: one per step per batch).
    pub iterations: usize,
    /// States evaluated per trajectory (a sequential run: one per step), summed over batches.
    pub evaluations: usize,
    /// The most states given to the network in one call.
    pub largest_batch: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl SamplingStats {
    /// Rounds of network evaluation per batch: a parallel run's latency in steps.
    pub fn iterations_per_batch(&self) -> f64 {
        self.iterations as f64 / self.batches.max(1) as f64
    }

    /// States evaluated per trajectory: `steps` for a sequential run.
    pub fn evaluations_per_trajectory(&self) -> f64 {
        self.evaluations as f64 / self.batches.max(1) as f64
    }
}

/// Samples and what they cost.
pub struct Samples {
    /// [n, ..] on the CPU.
    pub x: Tensor,
    /// For a conditional model (not drawn with the null label), the class of each sample.
    pub labels: Option<Vec<i64>>,
    pub stats: SamplingStats,
    /// With `trace`: the samples after each parallel iteration ([n, ..] on the CPU each); a
    /// batch that converged sooner holds its final samples.
    pub trace: Vec<Tensor>,
    /// The steps each network call evaluated per sample, in order over the batches (all 1 for
    /// a sequential run): what [`time_windows`] replays.
    pub windows: Vec<usize>,
}

/// The labels of `n` samples of a conditional model (none for an unconditional one, or when
/// drawn with the null label): `opts.class`, else the starting points' labels, else every class
/// in turn.
fn labels_for(model: &Model, opts: &SampleOptions, n: usize, start_labels: Option<&Vec<i64>>) -> Option<Vec<i64>> {
    let num_labels = model.num_labels() as i64;
    (num_labels > 0 && !opts.unconditional).then(|| match (opts.class, start_labels) {
        (None, Some(data_labels)) => data_labels.iter().copied().take(n).collect(),
        _ => (0..n as i64).map(|i| opts.class.unwrap_or(i % num_labels)).collect(),
    })
}

/// What a batch is sampled from: the model with the batch's labels, under classifier-free
/// guidance when it has a weight, its x̂0 clipped when asked. One type, so that the sampler and
/// [`time_window`] evaluate the same thing.
struct Predictor<'a> {
    conditional: Conditioned<'a, Model>,
    guided: Option<GuidedPair<'a, Model>>,
    model: &'a Model,
    clip: Option<f64>,
}

impl<'a> Predictor<'a> {
    fn new(model: &'a Model, labels: Option<&[i64]>, opts: &SampleOptions, device: Device) -> Self {
        let labels = labels.map(|l| Tensor::from_slice(l).to_device(device));
        let guided = labels.as_ref().filter(|_| opts.guidance != 0.0).map(|labels| GuidedPair {
            model,
            labels: labels.shallow_clone(),
            null_label: model.num_labels() as i64,
            weight: opts.guidance,
        });
        Predictor { conditional: Conditioned { model, labels }, guided, model, clip: opts.clip_x0 }
    }
}

impl NoisePredictor for Predictor<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let inner: &dyn NoisePredictor = match &self.guided {
            Some(guided) => guided,
            None => &self.conditional,
        };
        match self.clip {
            Some(limit) => ClipX0 { inner, schedule: self.model.schedule(), limit }.eps(x_t, t),
            None => inner.eps(x_t, t),
        }
    }
}

/// Seconds the network alone takes for a run's calls: one batched evaluation of `windows[i]`
/// steps of `n` samples per call, in turn (at the grid's first levels, with `draw`'s labels,
/// guidance and clipping), after one untimed call of the largest, the device's queue drained
/// around each. Against the run's own time, what the sampler adds to its network.
pub fn time_windows(
    model: &Model,
    options: (Kind, Device),
    n: usize,
    opts: &SampleOptions,
    windows: &[usize],
) -> Result<f64> {
    let (kind, device) = options;
    let levels = model.schedule().sampling_levels(opts.steps)?;
    let largest = windows.iter().copied().max().unwrap_or(1).min(opts.steps);
    let labels = labels_for(model, opts, n, None);
    let predictor = Predictor::new(model, labels.as_deref(), opts, device);
    let states = Noise::new(opts.seed, 0, largest * n).normal(model.data_shape(), kind, device);
    let t = super::steps::window_levels(&levels[..largest], n as i64, device);
    let mut seconds = 0.0;
    for (k, &w) in std::iter::once(&largest).chain(windows).enumerate() {
        let rows = (w.min(largest) * n) as i64;
        synchronize(device);
        let clock = Instant::now();
        let _ = predictor.eps(&states.narrow(0, 0, rows), &t.narrow(0, 0, rows))?;
        synchronize(device);
        if k > 0 {
            seconds += clock.elapsed().as_secs_f64();
        }
    }
    Ok(seconds)
}

/// Waits for the device's queued work, so that a time is the work's own.
fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Separates the step-noise streams of a seed from its starting-point streams.
const STEP_NOISE_SALT: u64 = 0x5eed_0f57_e900_015e;

/// Draws `n` samples from `model` (its weights in `options` = (precision, device)), `batch` at a
/// time; from pure noise at level T, or from `start`. Sample i uses streams i of `opts.seed`,
/// so it does not depend on `batch`. `on_step` sees every step of every batch.
pub fn draw(
    model: &Model,
    options: (Kind, Device),
    n: usize,
    opts: &SampleOptions,
    batch: usize,
    start: Option<&Start>,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Samples> {
    let (kind, device) = options;
    let schedule = model.schedule();
    if n == 0 {
        return Err(Error::Config("the number of samples must be at least 1".into()));
    }
    let num_labels = model.num_labels() as i64;
    if num_labels == 0 && (opts.class.is_some() || opts.guidance != 0.0) {
        return Err(Error::Config("a class and guidance need a conditional model (trained with --conditional)".into()));
    }
    if let Some(c) = opts.class.filter(|c| !(0..num_labels).contains(c)) {
        return Err(Error::Config(format!("class {c}: the model knows classes 0..{}", num_labels - 1)));
    }
    if !opts.guidance.is_finite() || opts.clip_x0.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
        return Err(Error::Config("guidance must be finite and the x̂0 clip positive".into()));
    }
    if let Some(s) = start.filter(|s| (s.x_t.size()[0] as usize) < n) {
        return Err(Error::Config(format!("the start holds {} points, {n} samples were asked for", s.x_t.size()[0])));
    }
    let levels = match start {
        Some(s) => schedule.sampling_levels_from(s.level, opts.steps)?,
        None => schedule.sampling_levels(opts.steps)?,
    };
    let table = StepTable::new(opts.sampler, opts.eta, schedule, &levels)?;
    let labels = labels_for(model, opts, n, start.and_then(|s| s.labels.as_ref()));
    if let Some(bad) = labels.iter().flatten().find(|l| !(0..num_labels).contains(*l)) {
        return Err(Error::Config(format!(
            "label {bad} of the starting points: the model knows classes 0..{}",
            num_labels - 1
        )));
    }
    if labels.as_ref().is_some_and(|l| l.len() < n) {
        return Err(Error::Config(format!("the start has fewer labels than the {n} samples asked for")));
    }
    let parallel_opts = opts.parallel.map(|window| ParallelOptions {
        window,
        tol: opts.tol,
        solver: opts.solver,
        history: opts.history,
        init: opts.parallel_init,
        trace: opts.trace,
    });
    let clock = Instant::now();
    let mut stats = SamplingStats { steps: table.num_steps(), ..SamplingStats::default() };
    let batch = batch.max(1);
    let mut parts = Vec::new();
    let mut traces = Vec::new();
    let mut windows = Vec::new();
    for first in (0..n).step_by(batch) {
        let len = batch.min(n - first);
        let predictor = &Predictor::new(model, labels.as_ref().map(|l| &l[first..first + len]), opts, device);
        // One stream per sample for x_T, and another for the noise of its steps.
        let x_t = match start {
            Some(s) => s.x_t.narrow(0, first as i64, len as i64).to_kind(kind).to_device(device),
            None => Noise::new(opts.seed, first as u64, len).normal(model.data_shape(), kind, device),
        };
        let mut noise = Noise::new(opts.seed ^ STEP_NOISE_SALT, first as u64, len);
        let x0 = match &parallel_opts {
            Some(p) => {
                let run = parallel(predictor, &table, x_t, &mut noise, p, on_step)?;
                stats.iterations += run.stats.iterations;
                stats.evaluations += run.stats.evaluations;
                stats.largest_batch = stats.largest_batch.max(run.stats.largest_batch);
                traces.push(run.trace);
                windows.extend(run.windows);
                run.x
            }
            None => {
                stats.iterations += table.num_steps();
                stats.evaluations += table.num_steps();
                stats.largest_batch = stats.largest_batch.max(len);
                windows.extend(std::iter::repeat_n(1, table.num_steps()));
                sequential(predictor, &table, x_t, &mut noise, on_step)?
            }
        };
        stats.batches += 1;
        parts.push(x0.to_device(Device::Cpu));
    }
    stats.seconds = clock.elapsed().as_secs_f64();
    let x = Tensor::cat(&parts, 0);
    // Iteration k of the whole set: each batch's iterate k, or its samples once it has converged.
    let longest = traces.iter().map(Vec::len).max().unwrap_or(0);
    let trace = (0..longest)
        .map(|k| {
            let at_k: Vec<Tensor> = traces
                .iter()
                .zip(&parts)
                .map(|(t, done)| t.get(k).map_or_else(|| done.shallow_clone(), |x| x.to_device(Device::Cpu)))
                .collect();
            Tensor::cat(&at_k, 0)
        })
        .collect();
    Ok(Samples { x, labels, stats, trace, windows })
}
