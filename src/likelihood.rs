//! Exact log-likelihood in one forward pass (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2):
//! log p_t(x) = log(p(T+1)/p(t)) + l_t(x) - l_{T+1}(x) + log N(x; 0, I). Levels are drawn
//! uniformly in training, so the prior ratio is zero.
use tch::{Kind, Tensor};

use crate::classifier::{f_value, Classifier};
use crate::schedule::levels_like;
use crate::Result;

/// log N(x; 0, I) per sample: [B] for x: [B, ..].
pub fn log_standard_normal(x: &Tensor) -> Tensor {
    let dim = x.size()[1..].iter().product::<i64>() as f64;
    x.square().flatten(1, -1).sum_dim_intlist(1, false, x.kind()) * -0.5 - 0.5 * dim * (2.0 * std::f64::consts::PI).ln()
}

/// log p_t(x) in nats per sample ([B]) at level `t` (0 = the data density), for x: [B, ..].
pub fn log_prob(model: &Classifier, x: &Tensor, t: usize, labels: Option<&Tensor>) -> Result<Tensor> {
    model.check_input(x)?;
    model.schedule().check_level(t)?;
    let logits = tch::no_grad(|| model.logits(x, labels, false));
    let levels = levels_like(t, x);
    Ok(log_standard_normal(x) - f_value(&logits, &levels))
}

/// Bits per dimension from a mean log-likelihood in nats per dimension (continuous data; for
/// 8-bit images add the scaling term of the chosen dequantization).
pub fn bits_per_dim(nats_per_dim: f64) -> f64 {
    -nats_per_dim / std::f64::consts::LN_2
}

/// How 8-bit images (stored as x = k/127.5 − 1, k ∈ 0..=255) are scored in bits/dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dequantization {
    /// x = (k + u)/128 − 1 with u ~ U(0, 1)^D: a true upper bound on the discrete NLL.
    Uniform,
    /// The official CDM code: x = k/127.5 − 1 as is. A density at grid points, not a bound.
    Paper,
}

/// The points to score under `how`: for `Uniform`, k is recovered from x = k/127.5 − 1 and
/// spread uniformly over its bin, (k + u)/128 − 1; for `Paper`, `x` itself.
pub fn dequantize(x: &Tensor, how: Dequantization, rng: &mut crate::rng::Rng) -> Tensor {
    match how {
        Dequantization::Paper => x.shallow_clone(),
        Dequantization::Uniform => {
            let k = ((x.to_kind(Kind::Double) + 1.0) * 127.5).round().clamp(0.0, 255.0);
            ((k + rng.uniform(&x.size(), Kind::Double)) / 128.0 - 1.0).to_kind(x.kind())
        }
    }
}

/// Bits per dimension of 8-bit data from the mean log-density in nats per dimension of the
/// rescaled points: −(log p/D)/ln 2 + 7, where 7 = log2 128 is the Jacobian of the scaling
/// from [0, 256) to [−1, 1) (both conventions add it).
pub fn bits_per_dim_8bit(nats_per_dim: f64) -> f64 {
    bits_per_dim(nats_per_dim) + 7.0
}
