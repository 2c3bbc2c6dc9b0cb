//! The CDM training loss (Yadin et al. 2024, arXiv:2402.10095, Algorithm 1): cross-entropy of
//! the level classifier plus the MSE of its input-gradient denoiser, trained by double backprop.
use tch::{Kind, Tensor};

use crate::classifier::Classifier;
use crate::rng::Rng;
use crate::Result;

/// The loss terms of one batch (scalar tensors, with graph).
pub struct CdmLoss {
    /// `ce_weight`·CE + MSE.
    pub total: Tensor,
    /// Cross-entropy of the level classifier, nats.
    pub ce: Tensor,
    /// Mean over samples at levels 1..=T of ‖ε̂ - ε‖² (summed over dimensions).
    pub mse: Tensor,
}

/// Levels spread evenly over 0..classes with one random offset: t_i = ⌊(i + u)·classes/B⌋.
/// Each t_i has the uniform marginal once the batch order is ignored, which it can be (the x0
/// and ε are i.i.d.), and the batch covers every level in proportion, which cuts the variance
/// of the cross-entropy's per-level terms.
fn stratified_levels(batch: usize, classes: usize, rng: &mut Rng) -> Tensor {
    let u = rng.unit();
    let t: Vec<i64> = (0..batch).map(|i| (((i as f64 + u) / batch as f64) * classes as f64) as i64).collect();
    Tensor::from_slice(&t).clamp(0, classes as i64 - 1)
}

/// Draws t ~ U{0..T+1} (stratified) and ε ~ N(0, I) for each sample of `x0` ([B, ..]) and returns the loss.
/// The squared error is summed over dimensions, so that it grows with D as the CE's signal
/// does (log-density ratios are extensive) and one `ce_weight` ≈ 1 suits 2-D points and images
/// alike; the official code averages over dimensions with w_ce = 1e-3 at D = 3072, which is
/// ce_weight ≈ 3 here.
/// The MSE skips t = 0 (ε̂ = 0: a constant) and t = T+1 (ε̂ = x_t = ε exactly): neither has a
/// gradient, and counting them would only dilute the average.
pub fn cdm_loss(
    model: &Classifier,
    x0: &Tensor,
    labels: Option<&Tensor>,
    ce_weight: f64,
    rng: &mut Rng,
) -> Result<CdmLoss> {
    let batch = x0.size()[0] as usize;
    let classes = model.schedule().num_classes();
    let t = stratified_levels(batch, classes, rng).to_device(x0.device());
    let eps = rng.normal(&x0.size(), x0.kind()).to_device(x0.device());
    let x_t = model.schedule().add_noise(x0, &eps, &t);
    let out = model.forward(&x_t, &t, labels, true)?;
    let ce = out.logits.log_softmax(1, Kind::Double).to_kind(x0.kind()).nll_loss(&t);
    let per_sample = (out.eps - eps).square().flatten(1, -1).sum_dim_intlist(1, false, x0.kind());
    let inside = t.gt(0).logical_and(&t.lt(classes as i64 - 1)).to_kind(x0.kind());
    let mse = (per_sample * &inside).sum(x0.kind()) / inside.sum(x0.kind()).clamp_min(1.0);
    Ok(CdmLoss { total: &ce * ce_weight + &mse, ce, mse })
}
