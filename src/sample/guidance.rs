//! Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022,
//! arXiv:2207.12598, eq. 6): ε̃ = (1 + w)·ε̂(x_t, t, c) − w·ε̂(x_t, t, ∅).
use tch::Tensor;

use crate::predictor::NoisePredictor;
use crate::Result;

/// A guided predictor from a conditional and an unconditional one; itself a predictor, so any
/// sampler runs it. w = 0 is the conditional model.
pub struct Guided<'a> {
    pub conditional: &'a dyn NoisePredictor,
    pub unconditional: &'a dyn NoisePredictor,
    /// Guidance weight w ≥ 0 (the official CDM code uses 1.25).
    pub weight: f64,
}

impl NoisePredictor for Guided<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let cond = self.conditional.eps(x_t, t)?;
        Ok(cond * (1.0 + self.weight) - self.unconditional.eps(x_t, t)? * self.weight)
    }
}
