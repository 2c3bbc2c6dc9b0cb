//! DDIM (Song, Meng, Ermon, "Denoising Diffusion Implicit Models", 2021, arXiv:2010.02502).
use tch::Tensor;

use super::{Noise, Step};
use crate::predictor::NoisePredictor;
use crate::schedule::{levels_like, Schedule};
use crate::{Error, Result};

/// DDIM settings.
#[derive(Clone, Copy, Debug)]
pub struct DdimOptions {
    /// η: 0 is deterministic; 1 has DDPM's posterior variance.
    pub eta: f64,
}

impl Default for DdimOptions {
    fn default() -> Self {
        DdimOptions { eta: 0.0 }
    }
}

/// Runs DDIM from `x_t` at `levels[0]` down the decreasing grid `levels` (ending at 0).
pub fn ddim(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    opts: &DdimOptions,
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    if opts.eta < 0.0 {
        return Err(Error::Config(format!("ddim eta must be non-negative, got {}", opts.eta)));
    }
    let mut x = x_t;
    for (i, pair) in levels.windows(2).enumerate() {
        let (t, s) = (pair[0], pair[1]);
        let (abar_t, abar_s) = (schedule.alpha_bar(t), schedule.alpha_bar(s));
        let level = levels_like(t, &x);
        let eps = model.eps(&x, &level)?;
        let x0 = schedule.x0_from_eps(&x, &eps, &level);
        // eq. (16): σ² = η² (1-ᾱ_s)/(1-ᾱ_t) (1 - ᾱ_t/ᾱ_s)
        let var = opts.eta.powi(2) * (1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s);
        // eq. (12): x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z
        x = &x0 * abar_s.sqrt() + &eps * (1.0 - abar_s - var).max(0.0).sqrt();
        if var > 0.0 {
            let z = noise.normal(&x.size()[1..], x.kind(), x.device());
            x += z * var.sqrt();
        }
        on_step(&Step { i, t, x_t: &x, x0: &x0 });
    }
    Ok(x)
}
