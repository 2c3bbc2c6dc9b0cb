//! Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022,
//! arXiv:2207.12598, eq. 6): ε̃ = (1 + w)·ε̂(x_t, t, c) − w·ε̂(x_t, t, ∅).
use tch::Tensor;

use crate::predictor::{Conditioned, LabelledPredictor, NoisePredictor};
use crate::{Error, Result};

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

/// Classifier-free guidance of one labelled model in one network pass of twice the batch
/// rather than two passes: each block of n states (a parallel sampler's window is k blocks,
/// laid out [k, n, ..]) goes in beside a copy of itself with the null label. The same ε̃ as
/// [`Guided`] over the model with `labels` and with none; a network pays its per-pass costs
/// (weights read, kernels launched) once.
pub struct GuidedPair<'a, M: ?Sized> {
    pub model: &'a M,
    /// Labels of the conditional half: [n].
    pub labels: Tensor,
    /// The null label (the model's number of classes).
    pub null_label: i64,
    /// Guidance weight w ≥ 0.
    pub weight: f64,
}

impl<M: LabelledPredictor + ?Sized> NoisePredictor for GuidedPair<'_, M> {
    fn eps(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (batch, n) = (x_t.size()[0], self.labels.size()[0]);
        if n == 0 || batch % n != 0 {
            return Err(Error::Shape(format!("a batch of {batch} states for {n} labels: expected a multiple of {n}")));
        }
        let blocks = batch / n;
        // [k·n, ..] → [k, 2, n, ..] → [2·k·n, ..]: each block beside its copy.
        let pair = |v: &Tensor| {
            let rest = &v.size()[1..];
            let shape = |middle: &[i64]| [&[blocks], middle, &[n], rest].concat();
            v.reshape(shape(&[1])).expand(shape(&[2]), false).reshape([&[2 * batch][..], rest].concat())
        };
        let labels = Tensor::cat(&[self.labels.shallow_clone(), self.labels.full_like(self.null_label)], 0);
        let both = Conditioned { model: self.model, labels: Some(labels) }.eps(&pair(x_t), &pair(t))?;
        let both = both.reshape([&[blocks, 2, n][..], &x_t.size()[1..]].concat());
        let (cond, uncond) = (both.select(1, 0), both.select(1, 1));
        Ok((cond * (1.0 + self.weight) - uncond * self.weight).reshape(x_t.size()))
    }
}
