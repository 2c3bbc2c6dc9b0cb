//! The denoising curve (Yadin et al. 2024, arXiv:2402.10095, Fig. 5): the mean squared error of
//! x̂0 = E[x0 | x_t] against the noise level, with the same noise for every model compared.
use tch::{Kind, Tensor};

use super::{mean, Batches};
use crate::data::KnownDensity;
use crate::model::Model;
use crate::predictor::{Conditioned, NoisePredictor};
use crate::sample::Noise;
use crate::schedule::levels_like;
use crate::{Error, Result};

/// The levels of the curve: 1%, 5%, 10%, 20%, 30%, 50%, 70%, 90% and 100% of T, rounded,
/// within 1..=T, without repeats.
pub fn denoising_levels(timesteps: usize) -> Vec<usize> {
    fractions_of(timesteps, &[0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
}

/// The levels at `fractions` (in (0, 1]) of T, rounded, within 1..=T, without repeats (small T
/// maps several fractions onto one level).
fn fractions_of(timesteps: usize, fractions: &[f64]) -> Vec<usize> {
    let mut levels: Vec<usize> =
        fractions.iter().map(|f| ((f * timesteps as f64).round() as usize).clamp(1, timesteps)).collect();
    levels.dedup();
    levels
}

/// The model's ε̂(x_t, t) for `x_t` ([N, ..]) at level `t` (1..=T), unconditional, in chunks.
pub fn predict_eps(model: &Model, x_t: &Tensor, t: usize, batches: &Batches) -> Result<Tensor> {
    let schedule = model.schedule();
    if t == 0 || t > schedule.timesteps() {
        return Err(Error::Config(format!("level {t} must be in 1..={}", schedule.timesteps())));
    }
    model.check_input(x_t)?;
    let predictor = Conditioned { model, labels: None };
    batches.map(x_t, |chunk, _| predictor.eps(chunk, &levels_like(t, chunk)))
}

/// x̂0 = E[x0 | x_t] of the model for inputs `x` ([N, ..], on the CPU) at level `t` (1..=T),
/// Tweedie's formula on [`predict_eps`]: `x` is x_t itself, or with `noise_seed` clean points
/// noised to level t first (point i with stream i of the seed, counted from
/// `batches.first_row`).
pub fn denoise(model: &Model, x: &Tensor, t: usize, noise_seed: Option<u64>, batches: &Batches) -> Result<Tensor> {
    let schedule = model.schedule();
    schedule.check_level(t)?;
    let x_t = match noise_seed {
        Some(seed) => {
            let mut noise = Noise::new(seed, batches.first_row as u64, x.size()[0] as usize);
            schedule.add_noise(x, &noise.normal(&x.size()[1..], x.kind(), x.device()), &levels_like(t, x))
        }
        None => x.shallow_clone(),
    };
    let eps = predict_eps(model, &x_t, t, batches)?;
    let x_t = x_t.to_kind(eps.kind());
    Ok(schedule.x0_from_eps(&x_t, &eps, &levels_like(t, &x_t)))
}

/// Mean squared error per dimension of the model's x̂0 for `x0` ([N, ..]) noised to level `t`
/// (1..=T) with noise `eps` (like `x0`).
pub fn denoising_mse(model: &Model, x0: &Tensor, t: usize, eps: &Tensor, batches: &Batches) -> Result<f64> {
    let schedule = model.schedule();
    if t == 0 || t > schedule.timesteps() {
        return Err(Error::Config(format!("denoising levels must be in 1..={}, got {t}", schedule.timesteps())));
    }
    if eps.size() != x0.size() {
        return Err(Error::Shape(format!("noise of shape {:?} for points of shape {:?}", eps.size(), x0.size())));
    }
    let predictor = Conditioned { model, labels: None };
    let x0_hat = batches.map(x0, |chunk, start| {
        let level = levels_like(t, chunk);
        let noise = eps.narrow(0, start, chunk.size()[0]).to_kind(chunk.kind()).to_device(chunk.device());
        let x_t = schedule.add_noise(chunk, &noise, &level);
        Ok(schedule.x0_from_eps(&x_t, &predictor.eps(&x_t, &level)?, &level))
    })?;
    Ok(mean(&(x0_hat.to_kind(Kind::Double) - x0.to_kind(Kind::Double)).square()))
}

/// The default levels of the table against the exact posterior mean: 1%, 5%, 10%, 25%, 50%,
/// 75% and 95% of T, at least 1, without repeats.
pub fn posterior_mean_levels(timesteps: usize) -> Vec<usize> {
    fractions_of(timesteps, &[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.95])
}

/// One level of the denoiser against the exact posterior mean.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PosteriorMeanRow {
    pub level: usize,
    pub alpha_bar: f64,
    /// E‖x̂0 − x0‖² of the model's x̂0 (summed over dimensions, averaged over points).
    pub mse: f64,
    /// The same for the exact E[x0 | x_t]: the MMSE.
    pub mmse: f64,
    /// 100·(mse/mmse − 1).
    pub excess_percent: f64,
}

/// The model's x̂0 against the exact posterior mean of `density` at each of `levels`
/// (1..=T), for `x0` ([N, ..]) noised with `eps` (like `x0`): how far the denoiser is from the
/// best possible one on the same draws.
pub fn against_posterior_mean(
    model: &Model,
    density: &dyn KnownDensity,
    x0: &Tensor,
    eps: &Tensor,
    levels: &[usize],
    batches: &Batches,
) -> Result<Vec<PosteriorMeanRow>> {
    let schedule = model.schedule();
    let predictor = Conditioned { model, labels: None };
    let squared_error = |a: &Tensor| {
        let error = (a.to_kind(Kind::Double) - x0.to_kind(Kind::Double)).square();
        error.flatten(1, -1).sum_dim_intlist(1, false, Kind::Double).mean(Kind::Double).double_value(&[])
    };
    let mut rows = Vec::new();
    for &t in levels {
        if t == 0 || t > schedule.timesteps() {
            return Err(Error::Config(format!("levels must be in 1..={}, got {t}", schedule.timesteps())));
        }
        let level = levels_like(t, x0);
        let x_t = schedule.add_noise(x0, eps, &level);
        let exact = density
            .posterior_mean(&x_t, schedule.alpha_bar(t))
            .ok_or_else(|| Error::Config("the data has no exact posterior mean".into()))?;
        let learned = batches.map(&x_t, |chunk, start| {
            let level = level.narrow(0, start, chunk.size()[0]).to_device(chunk.device());
            Ok(schedule.x0_from_eps(chunk, &predictor.eps(chunk, &level)?, &level))
        })?;
        let (mse, mmse) = (squared_error(&learned), squared_error(&exact));
        rows.push(PosteriorMeanRow {
            level: t,
            alpha_bar: schedule.alpha_bar(t),
            mse,
            mmse,
            excess_percent: 100.0 * (mse / mmse - 1.0),
        });
    }
    Ok(rows)
}
