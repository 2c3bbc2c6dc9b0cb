//! The denoising curve (Yadin et al. 2024, arXiv:2402.10095, Fig. 5): the mean squared error of
//! x̂0 = E[x0 | x_t] against the noise level, with the same noise for every model compared.
use tch::{Kind, Tensor};

use super::{mean, Batches};
use crate::model::Model;
use crate::predictor::{Conditioned, NoisePredictor};
use crate::schedule::levels_like;
use crate::{Error, Result};

/// The levels of the curve: 1%, 5%, 10%, 20%, 30%, 50%, 70%, 90% and 100% of T, rounded,
/// within 1..=T, without repeats.
pub fn denoising_levels(timesteps: usize) -> Vec<usize> {
    let mut levels: Vec<usize> = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
        .iter()
        .map(|f| ((f * timesteps as f64).round() as usize).clamp(1, timesteps))
        .collect();
    levels.dedup();
    levels
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
