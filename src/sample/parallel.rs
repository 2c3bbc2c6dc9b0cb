//! Parallel sampling by fixed-point iteration over the whole trajectory: ParaDiGMS (Shih et
//! al., "Parallel Sampling of Diffusion Models", NeurIPS 2023, arXiv:2305.16317, Algorithm 1)
//! and its triangular Anderson acceleration (Tang et al., "Accelerating Parallel Sampling of
//! Diffusion Models", ICML 2024, arXiv:2402.09970, ParaTAA).
//!
//! The sequential trajectory x_{j+1} = Φ_j(x_j) (one step of [`StepTable`], with its noise
//! drawn up front) is the fixed point of the Picard map on a window [b, b+p):
//! x_{j+1} ← x_b + Σ_{k=b..j} (Φ_k(x_k) − x_k), whose drifts are one batched network
//! evaluation of the whole window. A state has converged when an iteration moves it by less
//! than τ in units of its step's noise, ‖x′_{j+1} − x_{j+1}‖² / (D·v_j) < τ²; the window then
//! slides past every converged step (at least one: x_{b+1} is exact after one iteration).
//!
//! Where a state starts matters more than the solver. A new slot starts from the state before
//! it moved by its own step with x̂0 held at the window's last estimate (ε̂ re-derived from it),
//! so it gets its noise exactly and its drift nearly, where ParaDiGMS copies the last state: on
//! a two-mode mixture (32 samples), DDPM-1000 with p = 48 takes 36 iterations at 1.67× the sequential
//! evaluations, against 47 at 2.2× when the slot's ε̂ is held instead and 59 for the copy. The
//! first window's stochastic steps start the same way from x̂0 = 0 (33 iterations, 1.52×); its
//! deterministic steps copy x_T, which DDIM converges from in fewer evaluations.
//! [`ParallelInit::Copy`] starts every state as ParaDiGMS does, for comparison with it.
use std::collections::VecDeque;

use tch::{Kind, Tensor};

use super::steps::StepTable;
use super::{Noise, Step};
use crate::device::host_tensor;
use crate::inference_mode::InferenceMode;
use crate::predictor::NoisePredictor;
use crate::{Error, Result};

/// How the window's next iterate is formed from the Picard map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ParallelSolver {
    /// Plain Picard iteration (ParaDiGMS).
    #[default]
    Picard,
    /// Picard with triangular Anderson acceleration (ParaTAA): each state mixes the last few
    /// iterates with weights fitted to the residuals of the states before it.
    Anderson,
    /// Quasi-Newton on the banded system x_{j+1} = Φ_j(x_j) (ParaSolver's view): the window is
    /// swept in order, x′_{j+1} = Φ_j(x_j) + J_j·(x′_j − x_j), with J_j the step's Jacobian
    /// for Gaussian data of the current x̂0's variance. Picard is J_j = 1.
    Newton,
}

/// Where the states of steps not yet refined start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ParallelInit {
    /// Each new state is the one before it moved by its own step with x̂0 held at the window's
    /// last estimate (x̂0 = 0 in the first window): near the level it stands for.
    #[default]
    Guess,
    /// Each new state copies the one before it (ParaDiGMS and the CDL paper's code): the first
    /// window is x_T at every level, pure noise where the denoiser expects data, which is where
    /// the contrastive diffusion loss claims to help.
    Copy,
}

/// Settings of a parallel run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ParallelOptions {
    /// p, the number of steps refined together (1 is the sequential sampler).
    pub window: usize,
    /// τ, the tolerance in units of each step's noise standard deviation (ParaDiGMS: 0.1).
    pub tol: f64,
    pub solver: ParallelSolver,
    /// Iterates the Anderson solver remembers (ParaTAA: 2 to 5).
    pub history: usize,
    pub init: ParallelInit,
    /// Keep the window's last state after every iteration: with a window of every step, the
    /// sample each iteration budget would return.
    pub trace: bool,
}

impl Default for ParallelOptions {
    fn default() -> Self {
        ParallelOptions {
            window: 32,
            tol: 0.1,
            solver: ParallelSolver::Picard,
            history: 3,
            init: ParallelInit::Guess,
            trace: false,
        }
    }
}

/// A parallel run's samples, cost and, when asked, trace.
#[derive(Debug)]
pub struct ParallelRun {
    /// The samples [n, ..].
    pub x: Tensor,
    pub stats: ParallelStats,
    /// The window's last state after each iteration ([n, ..] each), when `trace` was set.
    pub trace: Vec<Tensor>,
    /// The steps in the window at each iteration, what each network call evaluated per sample.
    pub windows: Vec<usize>,
}

/// What a parallel run cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ParallelStats {
    /// Batched network evaluations (rounds of the window), the parallel run's latency in steps.
    pub iterations: usize,
    /// States evaluated per trajectory, summed over iterations; the sequential sampler needs
    /// one per step.
    pub evaluations: usize,
    /// The most states evaluated in one batch.
    pub largest_batch: usize,
}

/// Triangular Anderson acceleration: past iterates X and residuals F = G(X) − X of the window.
struct Anderson {
    capacity: usize,
    /// (X, F, valid) of past iterations, oldest first: X and F [W, n, ..] over window positions
    /// 1..=W, of which the first `valid` still hold the same steps (the window slides).
    past: VecDeque<(Tensor, Tensor, i64)>,
}

impl Anderson {
    /// The accelerated iterate from the current one `x` and its Picard image `g` ([W, n, ..],
    /// positions 1..=W): Σ_i α_i·G(X_i) with Σ α_i = 1, the weights of state j fitted to the
    /// residuals of the states up to j (the triangular structure: state j depends only on
    /// the states before it). Position 1 is exact after one Picard step and is left as it is.
    fn next(&mut self, x: &Tensor, g: &Tensor) -> Tensor {
        let f = g - x;
        let (w, n) = (x.size()[0], x.size()[1]);
        let past: Vec<(Tensor, Tensor, i64)> =
            self.past.iter().map(|(a, b, v)| (a.shallow_clone(), b.shallow_clone(), *v)).collect();
        self.past.push_back((x.shallow_clone(), f.shallow_clone(), w));
        if self.past.len() > self.capacity {
            self.past.pop_front();
        }
        if past.is_empty() {
            return g.shallow_clone();
        }
        let flat = |t: &Tensor| t.reshape([w, n, -1]);
        // Differences to the current iterate, one per past iterate, zero where a past iterate
        // held other steps: [m, W, n, D].
        let position = Tensor::arange(w, (Kind::Int64, x.device())).reshape([w, 1, 1]);
        let column =
            |now: &Tensor, then: &Tensor, valid: i64| flat(&(now - then)) * position.lt(valid).to_kind(x.kind());
        let dx = Tensor::stack(&past.iter().map(|(px, _, v)| column(x, px, *v)).collect::<Vec<_>>(), 0);
        let df = Tensor::stack(&past.iter().map(|(_, pf, v)| column(&f, pf, *v)).collect::<Vec<_>>(), 0);
        let m = dx.size()[0];
        let df64 = df.to_kind(Kind::Double);
        let gram = Tensor::einsum("iwnd,jwnd->nwij", &[&df64, &df64], None::<&[i64]>).cumsum(1, Kind::Double);
        let rhs = Tensor::einsum("iwnd,wnd->nwi", &[&df64, &flat(&f).to_kind(Kind::Double)], None::<&[i64]>)
            .cumsum(1, Kind::Double);
        // A ridge relative to the Gram's scale keeps the fit stable when iterates repeat.
        let ridge = gram.diagonal(0, -2, -1).mean_dim(-1, true, Kind::Double).unsqueeze(-1) * 1e-8 + 1e-300;
        let eye = Tensor::eye(m, (Kind::Double, gram.device()));
        let gamma = Tensor::linalg_solve(&(gram + ridge * eye), &rhs.unsqueeze(-1), true).squeeze_dim(-1); // [n, W, m]
        let gamma = gamma.permute([2, 1, 0]).unsqueeze(-1).to_kind(x.kind()); // [m, W, n, 1]
        let correction = ((dx + df) * gamma).sum_dim_intlist(0, false, x.kind()).reshape(x.size());
        let accelerated = Tensor::cat(&[g.narrow(0, 0, 1), (g - correction).narrow(0, 1, w - 1)], 0);
        // A fit that is not finite (a degenerate history) falls back to plain Picard, decided
        // on the device (no read).
        accelerated.where_self(&accelerated.isfinite().all(), g)
    }

    /// After the window slid by `stride` to `len` positions: every stored iterate drops its
    /// first `stride` positions, and the new ones carry no history.
    fn slide(&mut self, stride: i64, len: i64) {
        for (x, f, valid) in self.past.iter_mut() {
            let keep = (x.size()[0] - stride).min(len);
            let pad = |t: &Tensor| {
                let mut size = t.size();
                size[0] = len - keep;
                Tensor::cat(&[t.narrow(0, stride, keep), Tensor::zeros(&size, (t.kind(), t.device()))], 0)
            };
            *x = pad(x);
            *f = pad(f);
            *valid = (*valid - stride).clamp(0, keep);
        }
    }
}

/// y_k = J_k·y_{k−1} + r_k for k = 0..W (y_{−1} = 0), `j` [W, 1, ..] and `r` [W, n, ..]: the
/// quasi-Newton sweep's recurrence in ⌈log2 W⌉ rounds of whole-window operations (the
/// Hillis–Steele scan over the affine maps y ↦ J·y + r) instead of W dependent small steps.
fn affine_scan(j: &Tensor, r: &Tensor) -> Tensor {
    let w = r.size()[0];
    let (mut gain, mut y) = (j.shallow_clone(), r.shallow_clone());
    let mut offset = 1;
    while offset < w {
        // Entry k holds the map from y_{k−offset} to y_k; composing it with entry k − offset's
        // doubles its reach.
        let keep = w - offset;
        let reach = y.narrow(0, offset, keep) + gain.narrow(0, offset, keep) * y.narrow(0, 0, keep);
        let composed = gain.narrow(0, offset, keep) * gain.narrow(0, 0, keep);
        y = Tensor::cat(&[y.narrow(0, 0, offset), reach], 0);
        gain = Tensor::cat(&[gain.narrow(0, 0, offset), composed], 0);
        offset *= 2;
    }
    y
}

/// The window's states and noises in two buffers reused across iterations: states x_b..x_{b+w}
/// at positions `offset..=offset + w`, the noise of step b + i at `offset + i`. The window
/// slides along the buffers and is copied back to their start when it reaches their end; with
/// room for two windows, that copy never overlaps itself.
struct Window {
    states: Tensor,
    noises: Tensor,
    offset: i64,
    /// b, the first step in the window.
    begin: usize,
    /// w, the steps in the window.
    width: usize,
}

impl Window {
    /// An empty window at step 0 with room for windows of `capacity` steps.
    fn new(x_t: &Tensor, capacity: usize) -> Self {
        let mut size = x_t.size();
        size.insert(0, 2 * capacity as i64 + 2);
        let states = Tensor::zeros(&size, (x_t.kind(), x_t.device()));
        states.get(0).copy_(x_t);
        Window { noises: states.zeros_like(), states, offset: 0, begin: 0, width: 0 }
    }

    /// x_b..x_{b+w−1}, the states the window's steps start from: [w, n, ..].
    fn starts(&self) -> Tensor {
        self.states.narrow(0, self.offset, self.width as i64)
    }

    /// x_{b+1}..x_{b+w}, the states the window's steps lead to: [w, n, ..].
    fn ends(&self) -> Tensor {
        self.states.narrow(0, self.offset + 1, self.width as i64)
    }

    fn noise(&self) -> Tensor {
        self.noises.narrow(0, self.offset, self.width as i64)
    }

    /// Drops the first `stride` steps (converged).
    fn slide(&mut self, stride: usize) {
        self.begin += stride;
        self.offset += stride as i64;
        self.width -= stride;
    }

    /// Grows the window to `width` steps: the new steps' noise drawn from the per-sample streams
    /// in step order (one upload), and their states guessed from the window's last state by
    /// [`StepTable::held_x0_map`] with `x0` and the multistep memory `memory` ([1, n, ..] each)
    /// held, copying where `moves(j)` is false (one matrix product).
    fn extend(
        &mut self,
        table: &StepTable,
        noise: &mut Noise,
        width: usize,
        moves: &dyn Fn(usize) -> bool,
        x0: &Tensor,
        memory: &Tensor,
    ) {
        let (first, k) = (self.begin + self.width, (width - self.width) as i64);
        if k == 0 {
            return;
        }
        if self.offset + width as i64 + 1 > self.states.size()[0] {
            let kept = self.width as i64;
            self.states.narrow(0, 0, kept + 1).copy_(&self.states.narrow(0, self.offset, kept + 1));
            self.noises.narrow(0, 0, kept).copy_(&self.noises.narrow(0, self.offset, kept));
            self.offset = 0;
        }
        let at = self.offset + self.width as i64;
        let state_shape = &self.states.size()[1..];
        let range = first..first + k as usize;
        let stds: Vec<f64> = range.clone().map(|j| table.noise_std(j)).collect();
        let (kind, device) = (self.states.kind(), self.states.device());
        let z = noise.steps(&stds, &state_shape[1..], kind, device);
        self.noises.narrow(0, at, k).copy_(&z);
        let map = host_tensor(&table.held_x0_map(range, moves), &[k, k + 3], kind, device);
        let inputs = Tensor::cat(&[self.states.narrow(0, at, 1), x0.shallow_clone(), memory.shallow_clone(), z], 0);
        let _ = map.matmul_out(&self.states.narrow(0, at + 1, k).view([k, -1]), &inputs.view([k + 3, -1]));
        self.width = width;
    }
}

/// Samples by parallel fixed-point iteration over the steps of `table`, from `x_t` ([n, ..],
/// at `table.levels()[0]`). With the same `noise` streams it converges to what
/// [`super::sequential`] returns; `on_step` sees each step once it has converged.
///
/// An iteration is a fixed handful of batched device operations whatever the window's width:
/// the network call, the drifts, their cumulative sum (or the Newton sweep's scan) and the
/// residuals, then one read of the residuals (w numbers, from which the host finds the run of
/// converged states), and for the steps entering the window one upload of their noise and
/// guess map. No loop runs over the window's steps but the `on_step` calls. On a small
/// network every operation counts: the CPU spends microseconds on each whatever its size.
pub fn parallel(
    model: &dyn NoisePredictor,
    table: &StepTable,
    x_t: Tensor,
    noise: &mut Noise,
    opts: &ParallelOptions,
    on_step: &mut dyn FnMut(&Step),
) -> Result<ParallelRun> {
    if opts.window == 0 {
        return Err(Error::Config("the parallel window must be at least 1 step".into()));
    }
    if !(opts.tol >= 0.0 && opts.tol.is_finite()) {
        return Err(Error::Config(format!("the parallel tolerance must be finite and non-negative, got {}", opts.tol)));
    }
    if opts.solver == ParallelSolver::Anderson && opts.history == 0 {
        return Err(Error::Config("the Anderson solver needs a history of at least 1 iterate".into()));
    }
    let num_steps = table.num_steps();
    let n = x_t.size()[0];
    let levels = table.levels();
    let columns = table.columns(&x_t);
    // 1/(D·v_j): the squared residual at the state after step j in units of that step's noise.
    let dim = x_t.size()[1..].iter().product::<i64>() as f64;
    let inv_scale: Vec<f64> = (0..num_steps).map(|j| 1.0 / (dim * table.tolerance_scale(j))).collect();
    let tol2 = opts.tol * opts.tol;
    let mut stats = ParallelStats::default();
    let mut trace = Vec::new();
    let mut windows = Vec::new();
    let guess = opts.init == ParallelInit::Guess;
    let mut anderson =
        (opts.solver == ParallelSolver::Anderson).then(|| Anderson { capacity: opts.history, past: VecDeque::new() });
    let zeros = x_t.zeros_like().unsqueeze(0);
    let mut window = Window::new(&x_t, opts.window.min(num_steps));
    // The first window's stochastic steps move from x̂0 = 0 with their own noise; its
    // deterministic steps copy x_T.
    window.extend(table, noise, opts.window.min(num_steps), &|j| guess && table.draws_noise(j), &zeros, &zeros);
    // What the step before the window remembers, for multistep solvers.
    let mut carried: Option<Tensor> = None;
    loop {
        let (begin, w) = (window.begin, window.width as i64);
        let x = window.starts();
        let eps = model.eps(&x.flatten(0, 1), &columns.levels(begin, w))?.view_as(&x);
        // The sampler's arithmetic runs in inference mode, the network call, the buffers and
        // what `on_step` and the caller get outside it (see crate::inference_mode).
        let arithmetic = InferenceMode::enter();
        let x0 = columns.x0(begin, &x, &eps);
        stats.iterations += 1;
        stats.evaluations += w as usize;
        windows.push(w as usize);
        stats.largest_batch = stats.largest_batch.max(w as usize * n as usize);
        let outputs = table.memory(&eps, &x0);
        let memory = outputs.as_ref().map(|out| {
            let before = carried.as_ref().map_or_else(|| zeros.shallow_clone(), Tensor::shallow_clone);
            Tensor::cat(&[before, out.narrow(0, 0, w - 1)], 0)
        });
        let drift = columns.drift(begin, &x, &eps, memory.as_ref(), Some(&window.noise()));
        let mut ends = window.ends();
        // The solver's image of the window: Picard's x_{j+1} = x_b + Σ_{k=b..j} drift_k, or
        // the quasi-Newton sweep's x_{j+1} + d_{j+1} with d_{j+1} = J_j·d_j + Φ_j(x_j) − x_{j+1}.
        let image = match opts.solver {
            ParallelSolver::Newton => {
                let lambda = x0.var_dim(1, false, false).mean(Kind::Double).clamp_min(1e-6).to_kind(x.kind());
                &ends + affine_scan(&columns.gaussian_jacobian(begin, w, &lambda), &(&x + &drift - &ends))
            }
            _ => x.narrow(0, 0, 1) + drift.cumsum(0, drift.kind()),
        };
        let moved = anderson.as_mut().map(|acc| acc.next(&ends.copy(), &image));
        // Each state's squared residual, worst sample: [w], the iteration's one read. It is zero
        // exactly at the fixed point, whichever solver proposed the next iterate; NaN counts as
        // not converged. A finite residual has a finite image, so x_{b+1} (taken in any case)
        // needs a check of its own only where its residual is not finite.
        let residuals = Vec::<f64>::try_from(
            (&image - &ends).reshape([w, n, -1]).square().sum_dim_intlist(2, false, Kind::Double).amax(1, false),
        )?;
        if !residuals[0].is_finite() && image.get(0).isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::NonFiniteSample { step: begin, level: levels[begin] });
        }
        let converged = residuals.iter().zip(&inv_scale[begin..]).take_while(|&(r, v)| r * v <= tol2).count();
        // Converged states take their image (exact given the states before them), the others
        // the solver's next iterate.
        let stride = converged.max(1);
        let s = stride as i64;
        match &moved {
            Some(moved) => {
                ends.copy_(moved);
                ends.narrow(0, 0, s).copy_(&image.narrow(0, 0, s));
            }
            None => ends.copy_(&image),
        }
        drop(arithmetic);
        let done = ends.narrow(0, 0, s);
        for k in 0..stride {
            on_step(&Step::new(begin + k, levels[begin + k], &done, &x0, k as i64));
        }
        carried = outputs.as_ref().map(|out| out.narrow(0, s - 1, 1));
        if opts.trace {
            trace.push(ends.get(w - 1).copy());
        }
        if begin + stride == num_steps {
            return Ok(ParallelRun { x: done.get(s - 1).copy(), stats, trace, windows });
        }
        // Slide past the converged steps; a new step's state starts from the one before it
        // moved by that step with x̂0 held at the window's last estimate (no network call).
        let _arithmetic = InferenceMode::enter();
        window.slide(stride);
        let width = opts.window.min(num_steps - window.begin);
        let last_memory = outputs.map_or_else(|| zeros.shallow_clone(), |out| out.narrow(0, w - 1, 1));
        window.extend(table, noise, width, &|_| guess, &x0.narrow(0, w - 1, 1), &last_memory);
        if let Some(acc) = anderson.as_mut() {
            acc.slide(s, width as i64);
        }
    }
}
