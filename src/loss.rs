//! Training losses. The CDM loss (Yadin et al. 2024, arXiv:2402.10095, Algorithm 1):
//! cross-entropy of the level classifier plus the MSE of its input-gradient denoiser, trained
//! by double backprop. The DDM loss (Ho et al. 2020, arXiv:2006.11239, Algorithm 1): the MSE
//! of ε̂ alone.
use tch::{Kind, Tensor};

use crate::classifier::Classifier;
use crate::denoiser::Denoiser;
use crate::rng::Rng;
use crate::schedule::Schedule;
use crate::Result;

/// Weights of the two CDM loss terms; the paper's ablation (its Table 3) sets one to zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    pub ce: f64,
    pub mse: f64,
    /// Min-SNR-γ weighting of the squared error per level (Hang et al. 2023,
    /// arXiv:2303.09556): min(SNR_t, γ)/SNR_t. `None`: every level weighs the same (Ho et al.).
    pub min_snr: Option<f64>,
}

/// Per-sample weights of the squared error at levels `t` ([B]): min(1, γ/SNR_t), or 1 for all.
/// Low levels, whose ε is hard to tell but whose x̂0 is almost right anyway, weigh less; the
/// levels where samples take shape keep weight 1.
fn level_weights(schedule: &Schedule, t: &Tensor, min_snr: Option<f64>, like: &Tensor) -> Tensor {
    let Some(gamma) = min_snr else { return t.ones_like().to_kind(like.kind()) };
    let weights: Vec<f64> = schedule.alpha_bars().iter().map(|&abar| (gamma * (1.0 - abar) / abar).min(1.0)).collect();
    Tensor::from_slice(&weights).to_device(t.device()).index_select(0, t).to_kind(like.kind())
}

/// The loss terms of one batch (scalar tensors, with graph).
pub struct Loss {
    /// What is minimised: w_ce·CE + w_mse·MSE for a CDM, the MSE for a DDM.
    pub total: Tensor,
    /// Cross-entropy of the level classifier in nats (CDM only).
    pub ce: Option<Tensor>,
    /// Mean over samples at levels 1..=T of ‖ε̂ - ε‖² (summed over dimensions), unweighted.
    pub mse: Tensor,
}

/// Levels spread evenly over `first..first + count` with one random offset:
/// t_i = first + ⌊(i + u)·count/B⌋. Each t_i has the uniform marginal once the batch order is
/// ignored, which it can be (the x0 and ε are i.i.d.), and the batch covers every level in
/// proportion, which cuts the variance of the per-level terms.
fn stratified_levels(batch: usize, first: usize, count: usize, rng: &mut Rng) -> Tensor {
    let u = rng.unit();
    let t: Vec<i64> = (0..batch).map(|i| (((i as f64 + u) / batch as f64) * count as f64) as i64).collect();
    Tensor::from_slice(&t).clamp(0, count as i64 - 1) + first as i64
}

/// Mean over samples of ‖a - b‖², summed over dimensions: [B, ..] → [B].
fn squared_error(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).square().flatten(1, -1).sum_dim_intlist(1, false, a.kind())
}

/// Draws t ~ U{0..T+1} (stratified) and ε ~ N(0, I) for each sample of `x0` ([B, ..]) and
/// returns the CDM loss. The squared error is summed over dimensions, so that it grows with D
/// as the CE's signal does (log-density ratios are extensive) and one CE weight ≈ 1 suits
/// 2-D points and images alike; the official code averages over dimensions with w_ce = 1e-3 at
/// D = 3072, which is a CE weight ≈ 3 here. The MSE skips t = 0 (ε̂ = 0: a constant) and
/// t = T+1 (ε̂ = x_t = ε exactly): neither has a gradient, and counting them would only dilute
/// the average.
pub fn cdm_loss(
    model: &Classifier,
    x0: &Tensor,
    labels: Option<&Tensor>,
    weights: LossWeights,
    rng: &mut Rng,
) -> Result<Loss> {
    let batch = x0.size()[0] as usize;
    let classes = model.schedule().num_classes();
    let t = stratified_levels(batch, 0, classes, rng).to_device(x0.device());
    let eps = rng.normal(&x0.size(), x0.kind()).to_device(x0.device());
    let x_t = model.schedule().add_noise(x0, &eps, &t);
    let out = model.forward(&x_t, &t, labels, true)?;
    let ce = out.logits.log_softmax(1, Kind::Double).to_kind(x0.kind()).nll_loss(&t);
    let inside = t.gt(0).logical_and(&t.lt(classes as i64 - 1)).to_kind(x0.kind());
    let count = inside.sum(x0.kind()).clamp_min(1.0);
    let error = squared_error(&out.eps, &eps) * &inside;
    let mse = error.sum(x0.kind()) / &count;
    let weighted = (error * level_weights(model.schedule(), &t, weights.min_snr, x0)).sum(x0.kind()) / count;
    Ok(Loss { total: &ce * weights.ce + weighted * weights.mse, ce: Some(ce), mse })
}

/// Draws t ~ U{1..T} (stratified) and ε ~ N(0, I) for each sample of `x0` ([B, ..]) and
/// returns the DDM's simple loss, summed over dimensions like the CDM's MSE term.
pub fn ddm_loss(
    model: &Denoiser,
    x0: &Tensor,
    labels: Option<&Tensor>,
    min_snr: Option<f64>,
    rng: &mut Rng,
) -> Result<Loss> {
    let batch = x0.size()[0] as usize;
    let t = stratified_levels(batch, 1, model.schedule().timesteps(), rng).to_device(x0.device());
    let eps = rng.normal(&x0.size(), x0.kind()).to_device(x0.device());
    let x_t = model.schedule().add_noise(x0, &eps, &t);
    let error = squared_error(&model.eps(&x_t, &t, labels, true)?, &eps);
    let total = (&error * level_weights(model.schedule(), &t, min_snr, x0)).mean(x0.kind());
    Ok(Loss { total, ce: None, mse: error.mean(x0.kind()) })
}
