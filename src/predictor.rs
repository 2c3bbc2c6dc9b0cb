//! The one interface between networks and samplers: a noise prediction ε̂(x_t, t). Samplers
//! never know whether it comes from a denoiser or from a classifier's input gradient.
use tch::Tensor;

use crate::classifier::Classifier;
use crate::Result;

/// A noise predictor ε̂(x_t, t) ≈ E[ε | x_t].
pub trait NoisePredictor {
    /// x_t: [B, ..]; t: [B] Int64, the level of each sample (0..=T+1).
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor>;
}

/// Closures are predictors, so an analytic test model takes one line.
impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> NoisePredictor for F {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x_t, t)
    }
}

/// A classifier used as a denoiser through Theorem 3.1, optionally for fixed data labels.
pub struct ClassifierDenoiser<'a> {
    pub classifier: &'a Classifier,
    /// Data labels [B] for a conditional model; `None` uses the null label.
    pub labels: Option<Tensor>,
}

impl NoisePredictor for ClassifierDenoiser<'_> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        Ok(self.classifier.forward(x_t, t, self.labels.as_ref(), false)?.eps)
    }
}
