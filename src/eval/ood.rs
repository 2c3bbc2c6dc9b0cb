//! Out-of-distribution detection from one CDM forward pass: the likelihood log p(x), and the
//! typicality of the profile log p_t(x)/D over noise levels (z-scores against in-distribution
//! points, [`Typicality`]), each scored by AUROC (Yadin et al. 2024, arXiv:2402.10095,
//! Theorem 3.2 gives every level's density from the same logits).
use tch::{Kind, Tensor};

use super::{dim_of, Batches};
use crate::classifier::Classifier;
use crate::likelihood::{dequantize, log_prob_at_levels, Dequantization};
use crate::metrics::{auroc, Typicality};
use crate::rng::Rng;
use crate::{Error, Result};

/// The levels of a profile: t = 0, T/20, .., T (21 levels, rounded down).
pub fn ood_levels(timesteps: usize) -> Vec<usize> {
    (0..=20).map(|i| i * timesteps / 20).collect()
}

/// log p_t(x)/D in nats per dimension ([N, L], CPU Double) at each of `levels` for points `x`
/// ([N, ..]), all from one forward pass per point. With `dequantize_seed`, `x` holds 8-bit
/// images, uniformly dequantized with draws from that seed first.
pub fn level_log_densities(
    classifier: &Classifier,
    x: &Tensor,
    levels: &[usize],
    dequantize_seed: Option<u64>,
    batches: &Batches,
) -> Result<Tensor> {
    let points = match dequantize_seed {
        Some(seed) => dequantize(x, Dequantization::Uniform, &mut Rng::new(seed)),
        None => x.shallow_clone(),
    };
    let log_p = batches.map(&points, |chunk, _| log_prob_at_levels(classifier, chunk, levels, None))?;
    Ok(log_p.to_kind(Kind::Double) / dim_of(x))
}

/// AUROCs of telling in-distribution points (positive) from others by three scores of their
/// level profiles (higher = more in-distribution).
#[derive(Clone, Debug, PartialEq)]
pub struct OodScores {
    /// By the likelihood, the profile's first level (log p_0 when the levels start at 0).
    pub likelihood: f64,
    /// By −Σ_t z_t², [`Typicality::sum_of_squares`].
    pub typicality_sum_squares: f64,
    /// By −max_t |z_t|, [`Typicality::max_abs`].
    pub typicality_max_abs: f64,
    /// By the profile's value at each single level, in the profiles' order.
    pub by_level: Vec<f64>,
}

impl OodScores {
    /// The AUROCs of profiles `inside` against `outside` ([N, L] and [M, L], same levels),
    /// with `typicality` fitted on other in-distribution profiles.
    pub fn of(typicality: &Typicality, inside: &Tensor, outside: &Tensor) -> Result<Self> {
        let levels = typicality.levels();
        if inside.size()[..] != [inside.size()[0], levels] || outside.size()[..] != [outside.size()[0], levels] {
            return Err(Error::Shape(format!(
                "profiles of shapes {:?} and {:?} for a typicality fitted on {levels} levels",
                inside.size(),
                outside.size()
            )));
        }
        let scores = |f: &Tensor| -> Result<[Vec<f64>; 3]> {
            Ok([
                Vec::<f64>::try_from(f.select(1, 0))?,
                Vec::<f64>::try_from(typicality.sum_of_squares(f))?,
                Vec::<f64>::try_from(typicality.max_abs(f))?,
            ])
        };
        let (a, b) = (scores(inside)?, scores(outside)?);
        let by_level = (0..inside.size()[1])
            .map(|j| auroc(&Vec::<f64>::try_from(inside.select(1, j))?, &Vec::<f64>::try_from(outside.select(1, j))?))
            .collect::<Result<Vec<f64>>>()?;
        Ok(OodScores {
            likelihood: auroc(&a[0], &b[0])?,
            typicality_sum_squares: auroc(&a[1], &b[1])?,
            typicality_max_abs: auroc(&a[2], &b[2])?,
            by_level,
        })
    }
}
