//! x̂0 clipping for any predictor: the DDPM code clips x̂0 to the data range [-1, 1] at every
//! step; here the clip is folded back into ε̂, so every sampler gets it without knowing.
use tch::Tensor;

use crate::predictor::NoisePredictor;
use crate::schedule::Schedule;
use crate::Result;

/// A predictor whose implied x̂0 is clipped to [-limit, limit]:
/// ε̃ = (x_t − √ᾱ_t·clip(x̂0))/√(1−ᾱ_t).
pub struct ClipX0<'a> {
    pub inner: &'a dyn NoisePredictor,
    pub schedule: &'a Schedule,
    pub limit: f64,
}

impl NoisePredictor for ClipX0<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let eps = self.inner.eps(x_t, t)?;
        let (a, s) = self.schedule.coefficients(t, x_t);
        let x0 = ((x_t - &s * &eps) / &a).clamp(-self.limit, self.limit);
        Ok((x_t - a * x0) / s)
    }
}
