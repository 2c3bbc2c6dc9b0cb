//! Every sampler's update written once, as an affine map with per-step coefficients:
//!
//! x_{j+1} = a_j·x_j + b_j·ε̂_j + c_j·m_{j−1} + s_j·z_j,
//!
//! where ε̂_j = ε̂(x_j, t_j), m_{j−1} is what a multistep solver remembers from the step before
//! (its ε̂ or x̂0), and z_j ~ N(0, I). The coefficients are gathered into per-sample tensors, so
//! one batched call takes a window of steps at different levels: the sequential samplers are a
//! window of one, and Picard iteration ([`super::parallel`]) a window of many.
//!
//! - DDPM (Ho et al. 2020, arXiv:2006.11239, eq. 7 with ᾱ_t/ᾱ_s for α_t on a strided grid);
//! - DDIM (Song et al. 2021, arXiv:2010.02502, eq. 12, with η);
//! - DPM-Solver-2M (Lu et al. 2022, arXiv:2206.00927), noise form;
//! - DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2), data form.
//!
//! The multistep solvers take a first-order step first, and a first-order step onto ᾱ = 1.
use std::ops::Range;

use tch::{Kind, Tensor};

use super::SamplerKind;
use crate::device::host_tensor;
use crate::schedule::Schedule;
use crate::{Error, Result};

/// What a multistep solver carries from one step to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Memory {
    /// Nothing (DDPM, DDIM).
    None,
    /// The previous ε̂ (DPM-Solver-2M).
    Eps,
    /// The previous x̂0 (DPM-Solver++(2M)).
    X0,
}

/// The coefficients of every step of one sampler on one decreasing grid of levels.
#[derive(Clone, Debug)]
pub struct StepTable {
    levels: Vec<usize>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    noise_std: Vec<f64>,
    memory: Memory,
    /// The DDPM posterior variance of each step, the scale of Picard's tolerance.
    variance: Vec<f64>,
    /// ᾱ at the level each step starts from.
    alpha_bar: Vec<f64>,
}

/// λ = log(α/σ), the half log-SNR of a level (+∞ at ᾱ = 1).
fn lambda(abar: f64) -> f64 {
    0.5 * (abar / (1.0 - abar)).ln()
}

impl StepTable {
    /// The steps of `sampler` over `levels` (decreasing, every level ≤ T); `eta` is DDIM's η and
    /// ignored by the others. The grid may stop above level 0 (diffusers' DPM-Solver++ ends at
    /// its smallest σ): its last step is then an ordinary step onto that level.
    pub fn new(sampler: SamplerKind, eta: f64, schedule: &Schedule, levels: &[usize]) -> Result<Self> {
        if levels.len() < 2 || levels.windows(2).any(|w| w[1] >= w[0]) {
            return Err(Error::Config(format!("sampling levels must decrease, got {levels:?}")));
        }
        if levels[0] > schedule.timesteps() {
            return Err(Error::Config(format!(
                "sampling must start at or below level T = {}, got {}",
                schedule.timesteps(),
                levels[0]
            )));
        }
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(Error::Config(format!("ddim eta must be non-negative, got {eta}")));
        }
        let memory = match sampler {
            SamplerKind::Ddpm | SamplerKind::Ddim => Memory::None,
            SamplerKind::Dpm2 => Memory::Eps,
            SamplerKind::Dpmpp2m => Memory::X0,
        };
        let num_steps = levels.len() - 1;
        let mut table = StepTable {
            levels: levels.to_vec(),
            a: Vec::with_capacity(num_steps),
            b: Vec::with_capacity(num_steps),
            c: Vec::with_capacity(num_steps),
            noise_std: Vec::with_capacity(num_steps),
            memory,
            variance: Vec::with_capacity(num_steps),
            alpha_bar: Vec::with_capacity(num_steps),
        };
        let mut h_prev: Option<f64> = None;
        for pair in levels.windows(2) {
            let (abar_t, abar_s) = (schedule.alpha_bar(pair[0]), schedule.alpha_bar(pair[1]));
            let (alpha_t, sigma_t) = (abar_t.sqrt(), (1.0 - abar_t).sqrt());
            let (alpha_s, sigma_s) = (abar_s.sqrt(), (1.0 - abar_s).sqrt());
            // x̂0 = (x − σ_t ε̂)/α_t, so a term k·x̂0 adds k/α_t to a and −k·σ_t/α_t to b.
            let x0_a = 1.0 / alpha_t;
            let x0_b = -sigma_t / alpha_t;
            // The DDPM posterior variance of q(x_s | x_t, x0) on a strided grid.
            let beta = 1.0 - abar_t / abar_s;
            let posterior_var = beta * (1.0 - abar_s) / (1.0 - abar_t);
            let h = lambda(abar_s) - lambda(abar_t);
            let (a, b, c, var) = match sampler {
                SamplerKind::Ddpm => {
                    // eq. (7): mean = c0·x̂0 + c1·x_t.
                    let c0 = alpha_s * beta / (1.0 - abar_t);
                    let c1 = (1.0 - beta).sqrt() * (1.0 - abar_s) / (1.0 - abar_t);
                    (c0 * x0_a + c1, c0 * x0_b, 0.0, if pair[1] > 0 { posterior_var } else { 0.0 })
                }
                SamplerKind::Ddim => {
                    // eq. (16): σ² = η²·posterior variance; eq. (12): x_s = α_s x̂0 + √(1−ᾱ_s−σ²) ε̂ + σ z.
                    let var = eta * eta * posterior_var;
                    (alpha_s * x0_a, alpha_s * x0_b + (1.0 - abar_s - var).max(0.0).sqrt(), 0.0, var)
                }
                _ if abar_s >= 1.0 => (x0_a, x0_b, 0.0, 0.0),
                SamplerKind::Dpm2 => {
                    // x_s = (α_s/α_t) x − σ_s (e^h − 1) ε_t − σ_s (e^h − h − 1)(ε_t − ε_prev)/h_prev.
                    let second = h_prev.map_or(0.0, |hp| sigma_s * (h.exp_m1() - h) / hp);
                    (alpha_s / alpha_t, -sigma_s * h.exp_m1() - second, second, 0.0)
                }
                SamplerKind::Dpmpp2m => {
                    // x_s = (σ_s/σ_t) x − α_s (e^{−h} − 1) D, D = (1 + 1/(2r)) x̂0_t − x̂0_prev/(2r), r = h_prev/h.
                    let k = -alpha_s * (-h).exp_m1();
                    let (now, prev) = h_prev.map_or((1.0, 0.0), |hp| {
                        let r = hp / h;
                        (1.0 + 0.5 / r, -0.5 / r)
                    });
                    (sigma_s / sigma_t + k * now * x0_a, k * now * x0_b, k * prev, 0.0)
                }
            };
            table.a.push(a);
            table.b.push(b);
            table.c.push(c);
            table.noise_std.push(var.sqrt());
            table.variance.push(posterior_var);
            table.alpha_bar.push(abar_t);
            h_prev = Some(h);
        }
        Ok(table)
    }

    /// Number of steps.
    pub fn num_steps(&self) -> usize {
        self.levels.len() - 1
    }

    /// The level grid t_0 > … > t_N.
    pub fn levels(&self) -> &[usize] {
        &self.levels
    }

    /// Whether step `j` draws fresh noise. The per-sample streams are consumed only by such
    /// steps, in order, so a sequential and a parallel run see the same noise.
    pub fn draws_noise(&self, j: usize) -> bool {
        self.noise_std[j] > 0.0
    }

    /// The standard deviation of step `j`'s fresh noise (0 where it draws none): the scale
    /// [`super::Noise::steps`] draws it at, so that the update adds it as it is.
    pub fn noise_std(&self, j: usize) -> f64 {
        self.noise_std[j]
    }

    /// The scale that Picard's error at the state after step `j` is measured in: the DDPM
    /// posterior variance of step j (ParaDiGMS uses it for DDIM too). The last step onto
    /// level 0 has none, so it takes the one before (the noise that state last received).
    pub fn tolerance_scale(&self, j: usize) -> f64 {
        match self.variance[j] {
            v if v > 0.0 => v,
            _ => self.variance[..j].iter().rev().find(|&&v| v > 0.0).copied().unwrap_or(f64::MIN_POSITIVE),
        }
    }

    /// What step j + 1 needs from step j (its ε̂ or x̂0), for a multistep solver.
    pub fn memory(&self, eps: &Tensor, x0: &Tensor) -> Option<Tensor> {
        match self.memory {
            Memory::None => None,
            Memory::Eps => Some(eps.shallow_clone()),
            Memory::X0 => Some(x0.shallow_clone()),
        }
    }

    /// The states after the steps of `range` taken in turn from a state x_e, each with x̂0 held
    /// at one estimate (its ε̂ re-derived from it, so x_{j+1} = A_j·x_j + B_j·x̂0 + C_j·m + S_j·z_j
    /// with A_j = a_j + b_j/σ_j and B_j = −b_j·√ᾱ_j/σ_j, S_j·z_j the scaled draw of
    /// [`super::Noise::steps`]), or copying the state before where `moves(j)` is false: a
    /// parallel sampler's guess for steps it has not refined yet. As the rows of a [k, 3 + k]
    /// matrix over the inputs (x_e, x̂0, m, S_e·z_e, …, S_{e+k−1}·z_{e+k−1}), so that the k
    /// dependent steps are one matrix product on the device.
    pub(crate) fn held_x0_map(&self, range: Range<usize>, moves: &dyn Fn(usize) -> bool) -> Vec<f64> {
        let inputs = 3 + range.len();
        let mut row = vec![0.0; inputs];
        row[0] = 1.0;
        let mut rows = Vec::with_capacity(range.len() * inputs);
        for (i, j) in range.enumerate() {
            if moves(j) {
                let (alpha, sigma) = (self.alpha_bar[j].sqrt(), (1.0 - self.alpha_bar[j]).sqrt());
                let a = self.a[j] + self.b[j] / sigma;
                row.iter_mut().for_each(|v| *v *= a);
                row[1] -= self.b[j] * alpha / sigma;
                row[2] += self.c[j];
                row[3 + i] += 1.0;
            }
            rows.extend_from_slice(&row);
        }
        rows
    }

    /// The table as columns on the device of `like` ([n, ..], the states) in its kind.
    pub(crate) fn columns(&self, like: &Tensor) -> Columns<'_> {
        let (kind, device, n) = (like.kind(), like.device(), like.size()[0]);
        let steps = self.num_steps() as i64;
        let a_minus_one: Vec<f64> = self.a.iter().map(|a| a - 1.0).collect();
        let x0_x: Vec<f64> = self.alpha_bar.iter().map(|a| 1.0 / a.sqrt()).collect();
        let x0_eps: Vec<f64> = self.alpha_bar.iter().map(|a| -((1.0 - a) / a).sqrt()).collect();
        let rows = [&self.a, &a_minus_one, &self.b, &self.c, &x0_x, &x0_eps].map(|r| r.as_slice()).concat();
        let mut shape = vec![steps];
        shape.resize(like.dim() + 1, 1);
        let table = host_tensor(&rows, &[6, steps], kind, device);
        let [a, a_minus_one, b, c, x0_x, x0_eps] = [0, 1, 2, 3, 4, 5].map(|r| table.get(r).reshape(&shape[..]));
        Columns {
            table: self,
            a,
            a_minus_one,
            b,
            c,
            x0_x,
            x0_eps,
            levels: window_levels(&self.levels[..self.num_steps()], n, device).reshape([steps, n]),
        }
    }
}

/// A table's coefficients as columns [N, 1, ..] on the states' device and in their kind,
/// uploaded once per run: a range of steps is then a view of them, not an upload per call,
/// and a window of steps a few batched operations.
pub(crate) struct Columns<'a> {
    table: &'a StepTable,
    a: Tensor,
    /// a − 1, for a step's drift Φ_j(x) − x.
    a_minus_one: Tensor,
    b: Tensor,
    c: Tensor,
    /// x̂0 = x0_x·x + x0_eps·ε̂ at the level each step starts from: 1/√ᾱ and −√(1 − ᾱ)/√ᾱ.
    x0_x: Tensor,
    x0_eps: Tensor,
    /// Each step's level for each of the n samples: [N, n] Int64.
    levels: Tensor,
}

impl Columns<'_> {
    /// The levels of steps `first..first + w` laid out [w·n], matching a window flattened
    /// from [w, n, ..].
    pub(crate) fn levels(&self, first: usize, w: i64) -> Tensor {
        self.levels.narrow(0, first as i64, w).flatten(0, 1)
    }

    /// x̂0 = (x − √(1 − ᾱ)·ε̂)/√ᾱ of steps `first..first + W`, `x` and `eps` [W, n, ..].
    pub(crate) fn x0(&self, first: usize, x: &Tensor, eps: &Tensor) -> Tensor {
        let at = |c: &Tensor| c.narrow(0, first as i64, x.size()[0]);
        (x * at(&self.x0_x)).addcmul_(eps, &at(&self.x0_eps))
    }

    /// d x_{j+1} / d x_j of steps `first..first + w` if the data were N(0, λI), `lambda` a
    /// scalar tensor: then ε̂ = σ_t x/(ᾱ_t λ + σ_t²), so the step's Jacobian is
    /// a_j + b_j·σ_t/(ᾱ_t λ + σ_t²) = a_j − b_j·x0_eps·x0_x/(λ + x0_eps²) (the multistep
    /// memory ignored). [w, 1, ..].
    pub(crate) fn gaussian_jacobian(&self, first: usize, w: i64, lambda: &Tensor) -> Tensor {
        let at = |c: &Tensor| c.narrow(0, first as i64, w);
        let x0_eps = at(&self.x0_eps);
        at(&self.a) - at(&self.b) * &x0_eps * at(&self.x0_x) / (x0_eps.square() + lambda)
    }

    /// Steps `first..first + W` at once. `x`, `eps`: [W, n, ..], the states at their levels and
    /// their ε̂; `memory`: [W, n, ..], what each step remembers from the step before (unused by
    /// single-step samplers and by the first step); `noise`: [W, n, ..], each step's draw
    /// already scaled by its standard deviation ([`super::Noise::steps`]; read only where a
    /// step draws noise). Returns the states after each step, [W, n, ..].
    pub(crate) fn apply(
        &self,
        first: usize,
        x: &Tensor,
        eps: &Tensor,
        memory: Option<&Tensor>,
        noise: Option<&Tensor>,
    ) -> Tensor {
        self.affine(&self.a, first, x, eps, memory, noise)
    }

    /// What [`Columns::apply`] adds to each state, Φ_j(x_j) − x_j: a parallel sampler's drift.
    pub(crate) fn drift(
        &self,
        first: usize,
        x: &Tensor,
        eps: &Tensor,
        memory: Option<&Tensor>,
        noise: Option<&Tensor>,
    ) -> Tensor {
        self.affine(&self.a_minus_one, first, x, eps, memory, noise)
    }

    /// gain·x + b·ε̂ + c·m + z in fused multiply-adds, the terms a window does not use left out.
    fn affine(
        &self,
        gain: &Tensor,
        first: usize,
        x: &Tensor,
        eps: &Tensor,
        memory: Option<&Tensor>,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let w = x.size()[0];
        let range = first..first + w as usize;
        let at = |c: &Tensor| c.narrow(0, first as i64, w);
        let mut next = match noise.filter(|_| self.table.noise_std[range.clone()].iter().any(|&s| s > 0.0)) {
            Some(z) => z.addcmul(x, &at(gain)),
            None => x * at(gain),
        };
        next = next.addcmul_(eps, &at(&self.b));
        if let Some(m) = memory.filter(|_| self.table.c[range].iter().any(|&c| c != 0.0)) {
            next = next.addcmul_(m, &at(&self.c));
        }
        next
    }
}

/// Levels `levels` for `n` samples each, laid out [W·n] to match a window flattened from
/// [W, n, ..]: an Int64 tensor on `device`.
pub(crate) fn window_levels(levels: &[usize], n: i64, device: tch::Device) -> Tensor {
    let t: Vec<i64> = levels.iter().map(|&t| t as i64).collect();
    Tensor::from_slice(&t).to_device(device).repeat_interleave_self_int(n, 0, None).to_kind(Kind::Int64)
}
