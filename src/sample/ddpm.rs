//! Ancestral sampling (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020,
//! arXiv:2006.11239), on any grid: each step t → s draws from q(x_s | x_t, x̂0), whose variance
//! comes from ᾱ at the strided previous level, not from β_t.
use tch::Tensor;

use super::{Noise, Step};
use crate::predictor::NoisePredictor;
use crate::schedule::{levels_like, Schedule};
use crate::Result;

/// Runs ancestral sampling from `x_t` at `levels[0]` down the decreasing grid `levels` (ending at 0).
pub fn ddpm(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let mut x = x_t;
    for (i, pair) in levels.windows(2).enumerate() {
        let (t, s) = (pair[0], pair[1]);
        let (abar_t, abar_s) = (schedule.alpha_bar(t), schedule.alpha_bar(s));
        let level = levels_like(t, &x);
        let x0 = schedule.x0_from_eps(&x, &model.eps(&x, &level)?, &level);
        // eq. (7) with α_t replaced by ᾱ_t/ᾱ_s: the posterior q(x_s | x_t, x0).
        let beta = 1.0 - abar_t / abar_s;
        let mean = &x0 * (abar_s.sqrt() * beta / (1.0 - abar_t))
            + &x * ((1.0 - beta).sqrt() * (1.0 - abar_s) / (1.0 - abar_t));
        let var = beta * (1.0 - abar_s) / (1.0 - abar_t);
        x = if s > 0 { mean + noise.normal(&x.size()[1..], x.kind(), x.device()) * var.sqrt() } else { mean };
        on_step(&Step { i, t, x_t: &x, x0: &x0 });
    }
    Ok(x)
}
