//! Sampling a model, the one entry point that the command line, the training grids and the
//! evaluation all call: labels, classifier-free guidance and x̂0 clipping stacked into one
//! predictor, per-sample seeding (a sample does not depend on the batch it was drawn in),
//! batching, and the choice between a sequential and a parallel run.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::{parallel, sequential, ClipX0, GuidedPair, Noise, ParallelOptions, SamplerKind, Step, StepTable};
use crate::batches::Batches;
use crate::cuda_graph::GraphedModel;
use crate::data::Dataset;
use crate::distributed::{ProcessGroup, Shard};
use crate::model::Model;
use crate::predictor::{Conditioned, LabelledPredictor, NoisePredictor};
use crate::schedule::levels_like;
use crate::{Error, Result};

/// Which labels a conditional model's samples get (an unconditional model ignores this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conditioning {
    /// Every class in turn, or the labels of the starting points where a run starts from data.
    #[default]
    Classes,
    /// This one class.
    Class(i64),
    /// The null label: the unconditional model that label dropout trained alongside.
    Unconditional,
}

/// How to draw samples: the sampler, its grid, the seed, the conditioning, and optionally a
/// parallel (Picard) run instead of the sequential loop.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SampleOptions {
    pub sampler: SamplerKind,
    /// Sampling steps (levels visited, from T down to 0).
    pub steps: usize,
    /// DDIM η (0: deterministic).
    pub eta: f64,
    pub seed: u64,
    pub conditioning: Conditioning,
    /// Classifier-free guidance weight w: ε = (1 + w) ε(x, c) − w ε(x, ∅).
    pub guidance: f64,
    /// Clip x̂0 to [-C, C] at every step (images in [-1, 1]: 1).
    pub clip_x0: Option<f64>,
    /// Refine windows of steps at once by fixed-point iteration (ParaDiGMS) instead of one step
    /// after another.
    pub parallel: Option<ParallelOptions>,
}

impl Default for SampleOptions {
    /// Sequential deterministic DDIM with 100 steps, every class in turn, seed 0.
    fn default() -> Self {
        SampleOptions {
            sampler: SamplerKind::Ddim,
            steps: 100,
            eta: 0.0,
            seed: 0,
            conditioning: Conditioning::Classes,
            guidance: 0.0,
            clip_x0: None,
            parallel: None,
        }
    }
}

impl SampleOptions {
    /// Sequential DDPM with `steps` steps, unconditional, seed 1.
    pub fn ddpm(steps: usize) -> Self {
        SampleOptions { sampler: SamplerKind::Ddpm, steps, seed: 1, ..Default::default() }
    }

    /// Sequential deterministic DDIM with `steps` steps, seed 0.
    pub fn ddim(steps: usize) -> Self {
        SampleOptions { steps, ..Default::default() }
    }

    /// The same draw without the parallel run: the sequential samples it approximates.
    pub fn sequential(&self) -> Self {
        SampleOptions { parallel: None, ..self.clone() }
    }

    /// In words, for reports: "ddim 50 steps, class-conditional, classes in turn, guidance w =
    /// 1, parallel picard (window 16, tol 0.1)".
    pub fn describe(&self, num_labels: usize) -> String {
        let mut text = format!("{} {} steps", format!("{:?}", self.sampler).to_lowercase(), self.steps);
        let conditioning = match (num_labels, self.conditioning) {
            (0, _) | (_, Conditioning::Unconditional) => "unconditional".to_string(),
            (_, Conditioning::Class(c)) => format!("class {c}"),
            (_, Conditioning::Classes) => "class-conditional, classes in turn".to_string(),
        };
        text += &format!(", {conditioning}");
        if self.guidance != 0.0 {
            text += &format!(", guidance w = {}", self.guidance);
        }
        if let Some(p) = &self.parallel {
            text += &format!(
                ", parallel {} (window {}, tol {}, init {})",
                format!("{:?}", p.solver).to_lowercase(),
                p.window,
                p.tol,
                format!("{:?}", p.init).to_lowercase()
            );
        }
        text
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
    /// SDEdit from the first `n` points of `data` (and their labels): [`Start::sdedit`]; also
    /// returns the clean points, [n, ..] on the CPU.
    pub fn from_data(model: &Model, data: &Dataset, n: usize, level: usize, seed: u64) -> Result<(Tensor, Self)> {
        let x = data.first_points(n, seed);
        if (x.size()[0] as usize) < n {
            return Err(Error::Data(format!("{} points, {n} asked for", x.size()[0])));
        }
        let x = x.narrow(0, 0, n as i64).to_kind(Kind::Double);
        let labels = data.labels().map(|l| l.narrow(0, 0, n as i64));
        let start = Start::sdedit(model, &x, labels.as_ref(), level, seed)?;
        Ok((x, start))
    }

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
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
/// drawn with the null label): the one class asked for, else the starting points' labels, else
/// every class in turn.
fn labels_for(
    model: &Model,
    opts: &SampleOptions,
    rows: std::ops::Range<usize>,
    start_labels: Option<&Vec<i64>>,
) -> Option<Vec<i64>> {
    let n = rows.len();
    let num_labels = model.num_labels() as i64;
    match (num_labels, opts.conditioning, start_labels) {
        (0, _, _) | (_, Conditioning::Unconditional, _) => None,
        (_, Conditioning::Class(c), _) => Some(vec![c; n]),
        (_, Conditioning::Classes, Some(data_labels)) => Some(data_labels.iter().copied().take(n).collect()),
        (_, Conditioning::Classes, None) => Some(rows.map(|i| i as i64 % num_labels).collect()),
    }
}

/// What a batch is sampled from: the model with the batch's labels, under classifier-free
/// guidance when it has a weight, its x̂0 clipped when asked. One type, so that the sampler and
/// [`time_window`] evaluate the same thing.
struct Predictor<'a> {
    conditional: Conditioned<'a, dyn LabelledPredictor + 'a>,
    guided: Option<GuidedPair<'a, dyn LabelledPredictor + 'a>>,
    model: &'a Model,
    clip: Option<f64>,
    /// Ranks that share each call, in whole slots of `slot` rows (one per sample of the batch,
    /// the rows a window repeats its labels over).
    group: Option<&'a ProcessGroup>,
    slot: usize,
}

impl<'a> Predictor<'a> {
    /// The predictor of a batch of `slot` samples with `labels`, from `net`'s calls of `model`,
    /// its calls shared by `group`.
    fn new(
        (model, net): (&'a Model, &'a (dyn LabelledPredictor + 'a)),
        labels: Option<&[i64]>,
        opts: &SampleOptions,
        device: Device,
        (group, slot): (Option<&'a ProcessGroup>, usize),
    ) -> Self {
        let labels = labels.map(|l| Tensor::from_slice(l).to_device(device));
        let guided = labels.as_ref().filter(|_| opts.guidance != 0.0).map(|labels| GuidedPair {
            model: net,
            labels: labels.shallow_clone(),
            null_label: model.num_labels() as i64,
            weight: opts.guidance,
        });
        Predictor { conditional: Conditioned { model: net, labels }, guided, model, clip: opts.clip_x0, group, slot }
    }

    /// ε̂ of this process's rows.
    fn local(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
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

impl NoisePredictor for Predictor<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let Some(group) = self.group else { return self.local(x_t, t) };
        // This rank's whole slots of the call, gathered from every rank.
        let shard = Shard::chunks(x_t.size()[0] as usize, self.slot, group.rank(), group.world_size());
        let part = (shard.len > 0).then(|| self.local(&shard.rows(x_t), &shard.rows(t))).transpose();
        group.gather_rows(shard, part, x_t.zeros_like())
    }
}

/// Seconds the network alone takes for a run's calls: one batched evaluation of `windows[i]`
/// steps of `n` samples per call, in turn (at the grid's first levels, with `draw`'s labels,
/// guidance and clipping), after one untimed call of the largest, the device's queue drained
/// around each. Against the run's own time, what the sampler adds to its network.
pub fn time_windows(model: &Model, n: usize, opts: &SampleOptions, windows: &[usize], on: &Batches) -> Result<f64> {
    let (kind, device) = (on.kind, on.device);
    let levels = model.schedule().sampling_levels(opts.steps)?;
    let largest = windows.iter().copied().max().unwrap_or(1).min(opts.steps);
    let labels = labels_for(model, opts, 0..n, None);
    let graphed = on.graphs.then(|| GraphedModel::new(model, device));
    let net: &dyn LabelledPredictor = graphed.as_ref().map_or(model, |g| g);
    let predictor = Predictor::new((model, net), labels.as_deref(), opts, device, (on.group, n));
    let states = Noise::new(opts.seed, 0, largest * n).normal(model.data_shape(), kind, device);
    let t = super::steps::window_levels(&levels[..largest], n as i64, device);
    let mut seconds = 0.0;
    for (k, &w) in std::iter::once(&largest).chain(windows).enumerate() {
        let rows = (w.min(largest) * n) as i64;
        crate::device::synchronize(device);
        let clock = Instant::now();
        let _ = predictor.eps(&states.narrow(0, 0, rows), &t.narrow(0, 0, rows))?;
        crate::device::synchronize(device);
        if k > 0 {
            seconds += clock.elapsed().as_secs_f64();
        }
    }
    Ok(seconds)
}

/// Where a parallel run's time goes, against the sequential run it approximates.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Seconds per parallel iteration.
    pub iteration_seconds: f64,
    /// Seconds the network alone takes per iteration ([`time_windows`]).
    pub window_evaluation_seconds: f64,
    /// The cost of one iteration over one batched evaluation of its window.
    pub iteration_over_evaluation: f64,
    pub sequential_step_seconds: f64,
    /// The sequential run's seconds over the parallel run's.
    pub speed_up: f64,
}

impl Latency {
    /// Times the network calls of `parallel` (a run of `opts` with up to `batches.batch_size`
    /// samples a batch) alone, and sets its time against them and against `sequential`.
    pub fn of(
        model: &Model,
        opts: &SampleOptions,
        parallel: &Samples,
        sequential: &Samples,
        batches: &Batches,
    ) -> Result<Self> {
        let n = (parallel.x.size()[0] as usize).min(batches.batch_size.max(1));
        let network = time_windows(model, n, opts, &parallel.windows, batches)?;
        let (p, s) = (&parallel.stats, &sequential.stats);
        Ok(Latency {
            iteration_seconds: p.seconds / p.iterations.max(1) as f64,
            window_evaluation_seconds: network / p.iterations.max(1) as f64,
            iteration_over_evaluation: p.seconds / network,
            sequential_step_seconds: s.seconds / s.iterations.max(1) as f64,
            speed_up: s.seconds / p.seconds,
        })
    }
}

/// Separates the step-noise streams of a seed from its starting-point streams.
const STEP_NOISE_SALT: u64 = 0x5eed_0f57_e900_015e;

/// Draws `n` samples from `model` from pure noise at level T, `batches.batch_size` at a time
/// (its progress counts steps of all batches). Sample i uses streams i of `opts.seed` (counted
/// from `batches.first_row`, for a share of a larger set), so it does not depend on the batch
/// size, nor on how the set was shared out.
pub fn draw(model: &Model, n: usize, opts: &SampleOptions, batches: &Batches) -> Result<Samples> {
    draw_from(model, n, opts, batches, None, &mut |_| {})
}

/// [`draw`] from `start` where given (SDEdit), with `on_step` seeing every step of every batch.
pub fn draw_from(
    model: &Model,
    n: usize,
    opts: &SampleOptions,
    batches: &Batches,
    start: Option<&Start>,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Samples> {
    let (kind, device) = (batches.kind, batches.device);
    let schedule = model.schedule();
    if n == 0 {
        return Err(Error::Config("the number of samples must be at least 1".into()));
    }
    let num_labels = model.num_labels() as i64;
    let class = match opts.conditioning {
        Conditioning::Class(c) => Some(c),
        _ => None,
    };
    if num_labels == 0 && (class.is_some() || opts.guidance != 0.0) {
        return Err(Error::Config("a class and guidance need a conditional model (trained with --conditional)".into()));
    }
    if opts.conditioning == Conditioning::Unconditional && opts.guidance != 0.0 {
        return Err(Error::Config("guidance needs a class to guide towards, not the null label".into()));
    }
    if let Some(c) = class.filter(|c| !(0..num_labels).contains(c)) {
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
    let rows = batches.first_row..batches.first_row + n;
    let labels = labels_for(model, opts, rows, start.and_then(|s| s.labels.as_ref()));
    if let Some(bad) = labels.iter().flatten().find(|l| !(0..num_labels).contains(*l)) {
        return Err(Error::Config(format!(
            "label {bad} of the starting points: the model knows classes 0..{}",
            num_labels - 1
        )));
    }
    if labels.as_ref().is_some_and(|l| l.len() < n) {
        return Err(Error::Config(format!("the start has fewer labels than the {n} samples asked for")));
    }
    let clock = Instant::now();
    let mut stats = SamplingStats { steps: table.num_steps(), ..SamplingStats::default() };
    let batch = batches.batch_size.max(1);
    let total_steps = (n.div_ceil(batch) * table.num_steps()) as u64;
    let mut steps_done = 0;
    let mut on_step = |step: &Step| {
        steps_done += 1;
        if let Some(progress) = batches.progress {
            progress(steps_done, total_steps);
        }
        on_step(step)
    };
    let mut parts = Vec::new();
    let mut traces = Vec::new();
    let mut windows = Vec::new();
    // One set of graphs for every batch: the labels are among a graph's inputs.
    let graphed = batches.graphs.then(|| GraphedModel::new(model, device));
    let net: &dyn LabelledPredictor = graphed.as_ref().map_or(model, |g| g);
    for first in (0..n).step_by(batch) {
        let len = batch.min(n - first);
        let labels = labels.as_ref().map(|l| &l[first..first + len]);
        let predictor = &Predictor::new((model, net), labels, opts, device, (batches.group, len));
        // One stream per sample for x_T, and another for the noise of its steps.
        let x_t = match start {
            Some(s) => s.x_t.narrow(0, first as i64, len as i64).to_kind(kind).to_device(device),
            None => {
                Noise::new(opts.seed, (batches.first_row + first) as u64, len).normal(model.data_shape(), kind, device)
            }
        };
        let mut noise = Noise::new(opts.seed ^ STEP_NOISE_SALT, (batches.first_row + first) as u64, len);
        let x0 = match &opts.parallel {
            Some(p) => {
                let run = parallel(predictor, &table, x_t, &mut noise, p, &mut on_step)?;
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
                sequential(predictor, &table, x_t, &mut noise, &mut on_step)?
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
