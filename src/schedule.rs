//! Variance-preserving noise schedules over the classes t = 0..=T+1 of a classification
//! diffusion model (Yadin, Elata, Michaeli, "Classification Diffusion Models", 2024,
//! arXiv:2402.10095, section 3): x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε, with ᾱ_0 = 1 (clean data) and
//! ᾱ_{T+1} = 0 (pure N(0, I)).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::rng::Rng;
use crate::{Error, Result};

/// How ᾱ_t falls from 1 to 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// DDPM linear betas 1e-4..0.02 (Ho et al. 2020), scaled by 1000/T as in improved DDPM.
    Linear,
    /// Cosine ᾱ (Nichol & Dhariwal 2021, eq. 17), betas clipped at 0.999.
    Cosine,
    /// The CDM paper's "TDR" schedule, √(1-ᾱ_t) = t/(T+1): uniform in noise std.
    Tdr,
    /// Log SNR γ_t = ln(ᾱ_t/(1-ᾱ_t)) falling linearly from `logsnr_max` at t = 1 to `logsnr_min`
    /// at t = T: adjacent levels are equally far apart at every noise scale, where the linear
    /// and TDR schedules nearly double σ between their lowest levels (which makes those levels
    /// perfectly separable in high dimension), and the range reaches far below linear's
    /// σ_1 = 0.01.
    #[serde(rename = "logsnr")]
    #[value(name = "logsnr")]
    LogSnr,
}

/// A schedule's description, as stored in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Shape of ᾱ_t.
    pub kind: ScheduleKind,
    /// T, the number of noisy levels; the classifier has T+2 classes.
    pub timesteps: usize,
    /// γ_1, the log SNR of the least noisy level, for the `logsnr` kind (20: σ ≈ 4.5e-5).
    #[serde(default = "default_logsnr_max")]
    pub logsnr_max: f64,
    /// γ_T, the log SNR of the noisiest level, for the `logsnr` kind (−12: ᾱ ≈ 6e-6).
    #[serde(default = "default_logsnr_min")]
    pub logsnr_min: f64,
    /// How a DDM draws its training levels: the integers 1..=T, or a continuous log SNR
    /// (discrete when absent).
    #[serde(default)]
    pub levels: Levels,
}

/// The noise levels a denoiser is trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Levels {
    /// t ~ U{1..T}, the DDPM recipe.
    #[default]
    Discrete,
    /// Log SNR γ drawn from this truncated logistic, with the importance weight 1/q(γ), as in
    /// the code of Wu et al. (arXiv:2407.08946) after Kong et al. (arXiv:2302.03792): the
    /// network is then trained on the whole range its likelihood integrals ask it about. The
    /// network reads the fractional level of γ ([`Schedule::levels_at_logsnr`]), so the range
    /// must lie within the schedule's [γ_T, γ_1].
    Continuous(LogSnrProposal),
}

/// Truncation of a [`LogSnrProposal`], in scale units either side of its centre.
pub const LOGSNR_CLIP: f64 = 3.0;

/// A logistic distribution over log SNR truncated to loc ± 3·scale: where a DDM trained on
/// continuous levels is trained and where its I-MMSE integrals are taken (Kong et al.,
/// arXiv:2302.03792; Wu et al., arXiv:2407.08946). Logistic, because its density
/// σ(v)σ(−v) has the shape of the MMSE's derivative for Gaussian data: the integrand is
/// nearly flat after importance weighting.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSnrProposal {
    /// Centre.
    pub loc: f64,
    /// Scale; the support is loc ± 3·scale.
    pub scale: f64,
}

impl LogSnrProposal {
    /// The CDL code's recipe from the data's per-dimension variances (or covariance
    /// eigenvalues) λ_k: loc = −mean log λ (where σ(γ + log λ), the Gaussian MMSE, is
    /// halfway), scale = √(1 + (3/π)·var log λ) (the unbiased variance; 3 for D ≤ 2, as it does).
    pub fn from_variances(var: &[f64]) -> Result<Self> {
        if var.is_empty() || var.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return Err(Error::Config("log-SNR proposal: the data variances must be positive and finite".into()));
        }
        let logs: Vec<f64> = var.iter().map(|v| v.ln()).collect();
        let n = logs.len() as f64;
        let mean = logs.iter().sum::<f64>() / n;
        let scale = if logs.len() <= 2 {
            3.0
        } else {
            let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (1.0 + 3.0 / std::f64::consts::PI * variance).sqrt()
        };
        Ok(LogSnrProposal { loc: -mean, scale })
    }

    /// The proposal whose support is exactly [lo, hi].
    pub fn covering(lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::Config(format!("a log-SNR range needs finite lo < hi, got ({lo}, {hi})")));
        }
        Ok(LogSnrProposal { loc: (lo + hi) / 2.0, scale: (hi - lo) / (2.0 * LOGSNR_CLIP) })
    }

    /// The support [loc − 3·scale, loc + 3·scale].
    pub fn range(&self) -> (f64, f64) {
        (self.loc - LOGSNR_CLIP * self.scale, self.loc + LOGSNR_CLIP * self.scale)
    }

    /// γ at quantiles `u` ([B], in [0, 1]) of the truncated logistic, and the importance
    /// weight 1/q(γ) = scale·tanh(3/2)/(σ(v)σ(−v)), v = (γ − loc)/scale (tanh(3/2) is the
    /// mass inside the clip): each [B], f64.
    pub fn at_quantiles(&self, u: &Tensor) -> (Tensor, Tensor) {
        let edge = 1.0 / (1.0 + LOGSNR_CLIP.exp());
        let p = u.to_kind(Kind::Double) * (1.0 - 2.0 * edge) + edge;
        let v = (&p / (p.ones_like() - &p)).log();
        let weight = (v.sigmoid() * (-&v).sigmoid()).reciprocal() * (self.scale * (LOGSNR_CLIP / 2.0).tanh());
        (v * self.scale + self.loc, weight)
    }

    /// `n` draws, stratified in groups of `strata`: row i takes a uniform quantile in stratum
    /// (i mod strata) of `strata` equal ones, which cuts the variance of a mean over a group
    /// and keeps each draw's marginal. γ and 1/q(γ), each [n] f64 on `device`.
    pub fn draw(&self, n: usize, strata: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
        let strata = strata.max(1);
        let stratum = Tensor::arange(n as i64, (Kind::Int64, Device::Cpu)).remainder(strata as i64);
        let u = (rng.uniform(&[n as i64], Kind::Double) + stratum) / strata as f64;
        let (gamma, weight) = self.at_quantiles(&u);
        (gamma.to_device(device), weight.to_device(device))
    }
}

fn default_logsnr_max() -> f64 {
    20.0
}

fn default_logsnr_min() -> f64 {
    -12.0
}

impl ScheduleConfig {
    /// A schedule of this shape over T levels, with the default log-SNR range.
    pub fn new(kind: ScheduleKind, timesteps: usize) -> Self {
        ScheduleConfig {
            kind,
            timesteps,
            logsnr_max: default_logsnr_max(),
            logsnr_min: default_logsnr_min(),
            levels: Levels::Discrete,
        }
    }
}

impl Default for ScheduleConfig {
    /// T = 1000 with linear betas, as in the CDM paper's CIFAR-10 experiments.
    fn default() -> Self {
        ScheduleConfig::new(ScheduleKind::Linear, 1000)
    }
}

/// Most levels a schedule may have (the paper uses 1000); its tables hold T+2 values.
pub const MAX_TIMESTEPS: usize = 100_000;

/// ᾱ_t tabulated for t = 0..=T+1.
#[derive(Clone, Debug)]
pub struct Schedule {
    config: ScheduleConfig,
    alpha_bar: Vec<f64>,
    /// `alpha_bar` as a tensor on each device it was asked on.
    alpha_bar_tensors: TensorCache,
    /// −γ_1 < … < −γ_T, the table [`Schedule::levels_at_logsnr`] searches, likewise.
    neg_logsnr_tensors: TensorCache,
}

/// A table made once per device and kept, so that the per-batch calls of [`Schedule`] neither
/// rebuild it nor copy it to the device again (on a GPU, a host-to-device copy and a wait
/// each time). A clone starts empty.
#[derive(Default)]
struct TensorCache(std::sync::Mutex<Vec<(Device, Tensor)>>);

impl TensorCache {
    /// The table on `device`, made by `make` (on the CPU) the first time.
    fn get(&self, device: Device, make: impl FnOnce() -> Tensor) -> Tensor {
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, table)) = tables.iter().find(|(d, _)| *d == device) {
            return table.shallow_clone();
        }
        let table = make().to_device(device);
        tables.push((device, table.shallow_clone()));
        table
    }
}

impl Clone for TensorCache {
    fn clone(&self) -> Self {
        TensorCache::default()
    }
}

impl std::fmt::Debug for TensorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("TensorCache")
    }
}

impl Schedule {
    pub fn new(config: ScheduleConfig) -> Result<Self> {
        let t_max = config.timesteps;
        if !(1..=MAX_TIMESTEPS).contains(&t_max) {
            return Err(Error::Config(format!("schedule.timesteps is {t_max}; expected 1..={MAX_TIMESTEPS}")));
        }
        let mut alpha_bar = Vec::with_capacity(t_max + 2);
        alpha_bar.push(1.0);
        match config.kind {
            ScheduleKind::Linear => {
                let scale = 1000.0 / t_max as f64;
                let (lo, hi) = (scale * 1e-4, scale * 0.02);
                let mut prod = 1.0;
                for i in 0..t_max {
                    let frac = if t_max == 1 { 0.0 } else { i as f64 / (t_max - 1) as f64 };
                    prod *= 1.0 - (lo + (hi - lo) * frac).min(0.999);
                    alpha_bar.push(prod);
                }
            }
            ScheduleKind::Cosine => {
                let f = |u: f64| ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                let mut prod = 1.0;
                for t in 1..=t_max {
                    let beta = (1.0 - f(t as f64 / t_max as f64) / f((t - 1) as f64 / t_max as f64)).min(0.999);
                    prod *= 1.0 - beta;
                    alpha_bar.push(prod);
                }
            }
            ScheduleKind::Tdr => {
                for t in 1..=t_max {
                    alpha_bar.push(1.0 - (t as f64 / (t_max + 1) as f64).powi(2));
                }
            }
            ScheduleKind::LogSnr => {
                let (hi, lo) = (config.logsnr_max, config.logsnr_min);
                if !(hi.is_finite() && lo.is_finite() && lo < hi) {
                    return Err(Error::Config(format!(
                        "schedule.logsnr_min ({lo}) must be below schedule.logsnr_max ({hi}), both finite"
                    )));
                }
                let step = if t_max == 1 { 0.0 } else { (hi - lo) / (t_max - 1) as f64 };
                for i in 0..t_max {
                    let gamma = hi - step * i as f64;
                    alpha_bar.push(1.0 / (1.0 + (-gamma).exp()));
                }
            }
        }
        alpha_bar.push(0.0);
        let schedule = Schedule {
            config,
            alpha_bar,
            alpha_bar_tensors: TensorCache::default(),
            neg_logsnr_tensors: TensorCache::default(),
        };
        if let Levels::Continuous(proposal) = config.levels {
            let (lo, hi) = proposal.range();
            let (min, max) = (schedule.logsnr(t_max), schedule.logsnr(1));
            if !(proposal.scale > 0.0 && lo >= min - 1e-9 && hi <= max + 1e-9) {
                return Err(Error::Config(format!(
                    "continuous levels over log SNR [{lo:.3}, {hi:.3}] need a schedule that spans them; \
                     this one spans [{min:.3}, {max:.3}] (try --schedule logsnr)"
                )));
            }
        }
        Ok(schedule)
    }

    /// T, the number of noisy levels.
    pub fn timesteps(&self) -> usize {
        self.config.timesteps
    }

    /// T + 2, the number of classes (levels 0..=T+1).
    pub fn num_classes(&self) -> usize {
        self.config.timesteps + 2
    }

    /// ᾱ_t for one level t in 0..=T+1.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bar[t]
    }

    /// How training draws levels.
    pub fn levels(&self) -> Levels {
        self.config.levels
    }

    /// Where this schedule's network is trained, as a log-SNR proposal: a continuous model's
    /// own, or the truncated logistic spanning [γ_T, γ_1] of the integer levels.
    pub fn logsnr_proposal(&self) -> LogSnrProposal {
        match self.config.levels {
            Levels::Continuous(proposal) => proposal,
            Levels::Discrete => LogSnrProposal {
                loc: (self.logsnr(1) + self.logsnr(self.timesteps())) / 2.0,
                scale: ((self.logsnr(1) - self.logsnr(self.timesteps())) / (2.0 * LOGSNR_CLIP)).max(f64::MIN_POSITIVE),
            },
        }
    }

    /// The whole table ᾱ_0..ᾱ_{T+1}.
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// Checks a level given by a user.
    pub fn check_level(&self, t: usize) -> Result<()> {
        if t > self.timesteps() + 1 {
            return Err(Error::Config(format!("level {t} is outside 0..={}", self.timesteps() + 1)));
        }
        Ok(())
    }

    /// √ᾱ_t and √(1-ᾱ_t) per sample, shaped to broadcast against `like` ([B, ..]).
    /// `t`: [B] levels, integer (an Int64 tensor: the table itself) or fractional (a float
    /// tensor: see [`Schedule::alpha_bar_at`]), so a continuous level is exact everywhere the
    /// schedule is asked, not truncated to the level below.
    pub fn coefficients(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        // Both square roots in f64, cast last: in f32, 1 − ᾱ_t rounds to 0 below 6e-8 (γ > 16.6).
        let mut shape = vec![-1i64];
        shape.resize(like.dim(), 1);
        let (abar, one_minus) = self.alpha_bar_pair(&t.to_device(like.device()));
        (
            abar.sqrt().reshape(&shape[..]).to_kind(like.kind()),
            one_minus.sqrt().reshape(&shape[..]).to_kind(like.kind()),
        )
    }

    /// ᾱ_t and 1 − ᾱ_t in f64 for levels `t` ([B], integer or fractional). At a fractional level
    /// t = i + f inside [1, T] the log SNR is interpolated linearly, γ_t = (1 − f)·γ_i + f·γ_{i+1},
    /// and ᾱ_t = σ(γ_t): the exact inverse of [`Schedule::level_at_logsnr`], so a network asked
    /// at `level_at_logsnr(γ)` sees data noised at exactly γ. On the two end intervals [0, 1]
    /// and [T, T+1], where γ is infinite at the integer end, ᾱ itself is interpolated linearly.
    pub fn alpha_bar_pair(&self, t: &Tensor) -> (Tensor, Tensor) {
        let table = self.alpha_bar_tensors.get(t.device(), || Tensor::from_slice(&self.alpha_bar));
        if !t.is_floating_point() {
            let abar = table.index_select(0, &t.to_kind(Kind::Int64));
            return (abar.shallow_clone(), abar.ones_like() - abar);
        }
        let t_max = self.timesteps() as f64;
        let t = t.to_kind(Kind::Double).clamp(0.0, t_max + 1.0);
        let lower = t.floor().clamp(0.0, t_max);
        let frac = &t - &lower;
        let lower = lower.to_kind(Kind::Int64);
        let (a0, a1) = (table.index_select(0, &lower), table.index_select(0, &(&lower + 1)));
        let linear = &a0 + (&a1 - &a0) * &frac;
        // logit of both ends; only read where both are finite (1 ≤ i, i + 1 ≤ T).
        let logit = |a: &Tensor| (a / (a.ones_like() - a)).log();
        let gamma = logit(&a0) * (frac.ones_like() - &frac) + logit(&a1) * &frac;
        let inside = lower.ge(1).logical_and(&lower.le(t_max as i64 - 1));
        let abar = gamma.sigmoid().where_self(&inside, &linear);
        // 1 − ᾱ as σ(−γ) inside, not by subtraction: it keeps its digits at high SNR.
        let one_minus = (-&gamma).sigmoid().where_self(&inside, &(linear.ones_like() - &linear));
        (abar, one_minus)
    }

    /// ᾱ at one level t in [0, T+1], integer or fractional (see [`Schedule::alpha_bar_pair`]).
    pub fn alpha_bar_at(&self, t: f64) -> f64 {
        self.alpha_bar_pair(&Tensor::from_slice(&[t])).0.double_value(&[0])
    }

    /// x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε (forward process, per-sample levels `t`: [B]).
    pub fn add_noise(&self, x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
        let (a, s) = self.coefficients(t, x0);
        a * x0 + s * eps
    }

    /// x̂0 = (x_t - √(1-ᾱ_t)·ε̂)/√ᾱ_t, Tweedie's posterior mean when ε̂ = E[ε|x_t]. Needs ᾱ_t > 0.
    pub fn x0_from_eps(&self, x_t: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
        let (a, s) = self.coefficients(t, x_t);
        (x_t - s * eps) / a
    }

    /// log SNR γ_t = ln(ᾱ_t / (1 − ᾱ_t)) of level t in 1..=T (finite there).
    pub fn logsnr(&self, t: usize) -> f64 {
        let abar = self.alpha_bar[t];
        (abar / (1.0 - abar)).ln()
    }

    /// The fractional level whose log SNR is `gamma`, interpolated linearly in γ between the
    /// integer levels 1..=T (γ decreases with t); clamped to [1, T]. A DDM's time embedding
    /// takes it as is, so the network can be asked for any noise level in its range, and
    /// [`Schedule::coefficients`] gives back exactly σ(γ) there.
    pub fn level_at_logsnr(&self, gamma: f64) -> f64 {
        self.levels_at_logsnr(&Tensor::from_slice(&[gamma])).double_value(&[0])
    }

    /// [`Schedule::level_at_logsnr`] per sample: fractional levels (f64, [B]) for log SNRs
    /// `gamma` ([B]), on the device of `gamma`.
    pub fn levels_at_logsnr(&self, gamma: &Tensor) -> Tensor {
        let t_max = self.timesteps() as i64;
        let gamma = gamma.to_kind(Kind::Double);
        if t_max == 1 {
            return gamma.ones_like();
        }
        // −γ_1 < −γ_2 < … < −γ_T: an increasing table to search.
        let table = self.neg_logsnr_tensors.get(gamma.device(), || {
            Tensor::from_slice(&(1..=self.timesteps()).map(|t| -self.logsnr(t)).collect::<Vec<_>>())
        });
        let target = -&gamma;
        // Index j (0-based into levels 1..=T) of the first −γ at or above the target, so the
        // level lies in [j, j + 1] (1-based): between table entries j − 1 and j.
        let j = target.searchsorted(&table, false, false, "left", None::<&Tensor>).clamp(1, t_max - 1);
        let (lo, hi) = (table.index_select(0, &(&j - 1)), table.index_select(0, &j));
        let level = (target - &lo) / (hi - lo) + j.to_kind(Kind::Double);
        level.clamp(1.0, t_max as f64)
    }

    /// `num_steps + 1` decreasing levels from T to 0, evenly spaced: the sampling grid. Starts
    /// at T rather than T+1 because x0 is undefined from pure noise (ᾱ_{T+1} = 0).
    pub fn sampling_levels(&self, num_steps: usize) -> Result<Vec<usize>> {
        self.sampling_levels_from(self.timesteps(), num_steps)
    }

    /// `num_steps + 1` decreasing levels from `start` (1..=T) to 0, evenly spaced: the grid of a
    /// run that starts from noised data rather than pure noise (SDEdit).
    pub fn sampling_levels_from(&self, start: usize, num_steps: usize) -> Result<Vec<usize>> {
        let t_max = self.timesteps();
        if start == 0 || start > t_max {
            return Err(Error::Config(format!("the starting level must be in 1..={t_max}, got {start}")));
        }
        if num_steps == 0 || num_steps > start {
            return Err(Error::Config(format!("steps must be in 1..={start}, got {num_steps}")));
        }
        Ok((0..=num_steps).map(|i| ((start * (num_steps - i)) as f64 / num_steps as f64).round() as usize).collect())
    }
}

/// Level `t` for every sample of `x` ([B, ..]): an Int64 tensor [B] on the device of `x`.
pub fn levels_like(t: usize, x: &Tensor) -> Tensor {
    Tensor::full([x.size()[0]], t as i64, (Kind::Int64, x.device()))
}
