//! The one interface between networks and samplers: a noise prediction ε̂(x_t, t). Samplers
//! never know whether it comes from a denoiser or from a classifier's input gradient.
use tch::Tensor;

use crate::classifier::Classifier;
use crate::model::Model;
use crate::{Error, Result};

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

/// A model that predicts ε̂ given data labels.
pub trait LabelledPredictor {
    fn eps_given(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor>;
}

impl LabelledPredictor for Classifier {
    /// Theorem 3.1 through the input gradient.
    fn eps_given(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward(x_t, t, labels, false)?.eps)
    }
}

impl LabelledPredictor for Model {
    fn eps_given(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.eps(x_t, t, labels)
    }
}

/// A model with fixed data labels, as a noise predictor.
pub struct Conditioned<'a, M: ?Sized> {
    pub model: &'a M,
    /// Data labels [n] for a conditional model; `None` uses the null label. A batch of k·n
    /// states (a parallel sampler's window, laid out [k, n, ..]) gets them repeated k times.
    pub labels: Option<Tensor>,
}

impl<M: LabelledPredictor + ?Sized> NoisePredictor for Conditioned<'_, M> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let Some(labels) = &self.labels else { return self.model.eps_given(x_t, t, None) };
        let (batch, n) = (x_t.size()[0], labels.size()[0]);
        match batch {
            b if b == n => self.model.eps_given(x_t, t, Some(labels)),
            b if n > 0 && b % n == 0 => self.model.eps_given(x_t, t, Some(&labels.repeat([b / n]))),
            b => Err(Error::Shape(format!("a batch of {b} states for {n} labels: expected a multiple of {n}"))),
        }
    }
}
