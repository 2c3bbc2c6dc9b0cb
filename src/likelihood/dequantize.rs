//! Bits per dimension, and the two conventions for 8-bit images stored as x = k/127.5 − 1:
//! uniform dequantization (a bound on the discrete NLL; Theis et al. 2016, arXiv:1511.01844)
//! and the official CDM code's points as they are.
use tch::{Kind, Tensor};

use crate::{Error, Result};

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

/// How `x` is scored at `level`, as `cdm nll` chooses: `asked` (8-bit image data at level 0
/// only); else 8-bit images at level 0 get uniform dequantization unless `continuous`. `None`:
/// `x` is scored as the continuous points it is.
pub fn convention_for(
    x: &Tensor,
    level: usize,
    asked: Option<Dequantization>,
    continuous: bool,
) -> Result<Option<Dequantization>> {
    match asked {
        Some(_) if x.dim() != 4 || level != 0 => {
            Err(Error::Config("dequantization applies to 8-bit image data at level 0".into()))
        }
        Some(how) => Ok(Some(how)),
        None if !continuous && level == 0 && crate::data::is_8bit(x) => Ok(Some(Dequantization::Uniform)),
        None => Ok(None),
    }
}

/// The points to score under `how`: for `Uniform`, k is recovered from x = k/127.5 − 1 and
/// spread uniformly over its bin, (k + u)/128 − 1; for `Paper`, `x` itself.
pub fn dequantize(x: &Tensor, how: Dequantization, rng: &mut crate::rng::Rng) -> Tensor {
    match how {
        Dequantization::Paper => x.shallow_clone(),
        Dequantization::Uniform => spread_points_in_bins(x, &rng.uniform(&x.size(), Kind::Double)),
    }
}

/// Points x = k/127.5 − 1 moved by u ∈ [0, 1) within their 8-bit bins: [`spread_in_bins`] of
/// the k they were made from, in x's kind.
pub fn spread_points_in_bins(x: &Tensor, u: &Tensor) -> Tensor {
    let k = ((x.to_kind(Kind::Double) + 1.0) * 127.5).round().clamp(0.0, 255.0);
    spread_in_bins(&k, u).to_kind(x.kind())
}

/// Pixel values k (0..=255, any float kind) moved by u ∈ [0, 1) within their bins on the
/// [−1, 1] scale: (k + u)/128 − 1, the bin of k being [k, k + 1)/128 − 1.
pub fn spread_in_bins(k: &Tensor, u: &Tensor) -> Tensor {
    (k + u) / 128.0 - 1.0
}

/// Bits per dimension of 8-bit data from the mean log-density in nats per dimension of the
/// rescaled points: −(log p/D)/ln 2 + 7, where 7 = log2 128 is the Jacobian of the scaling
/// from [0, 256) to [−1, 1) (both conventions add it).
pub fn bits_per_dim_8bit(nats_per_dim: f64) -> f64 {
    bits_per_dim(nats_per_dim) + 7.0
}
