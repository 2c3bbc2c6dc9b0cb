//! Variance-preserving noise schedules over the classes t = 0..=T+1 of a classification
//! diffusion model (Yadin, Elata, Michaeli, "Classification Diffusion Models", 2024,
//! arXiv:2402.10095, section 3): x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε, with ᾱ_0 = 1 (clean data) and
//! ᾱ_{T+1} = 0 (pure N(0, I)).
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

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
        ScheduleConfig { kind, timesteps, logsnr_max: default_logsnr_max(), logsnr_min: default_logsnr_min() }
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
        Ok(Schedule { config, alpha_bar })
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
    /// `t`: [B] integer levels.
    pub fn coefficients(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        // Both square roots in f64, cast last: in f32, 1 − ᾱ_t rounds to 0 below 6e-8 (γ > 16.6).
        let mut shape = vec![-1i64];
        shape.resize(like.dim(), 1);
        let table = Tensor::from_slice(&self.alpha_bar).to_device(like.device());
        let abar = table.index_select(0, &t.to_kind(Kind::Int64)).reshape(&shape[..]);
        let sigma = (abar.ones_like() - &abar).sqrt();
        (abar.sqrt().to_kind(like.kind()), sigma.to_kind(like.kind()))
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
    /// takes it as is, so the network can be asked for any noise level in its range.
    pub fn level_at_logsnr(&self, gamma: f64) -> f64 {
        let t_max = self.timesteps();
        // The first level whose γ is at or below `gamma` (ᾱ is decreasing, and γ with it).
        let target = 1.0 / (1.0 + (-gamma).exp());
        match self.alpha_bar[1..=t_max].partition_point(|&abar| abar > target) + 1 {
            t if t > t_max => t_max as f64,
            1 => 1.0,
            t => {
                let (hi, lo) = (self.logsnr(t - 1), self.logsnr(t));
                (t - 1) as f64 + (hi - gamma) / (hi - lo)
            }
        }
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
