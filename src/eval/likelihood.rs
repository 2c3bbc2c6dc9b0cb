//! Bits/dim of held-out points by the estimator that suits the model: a CDM's exact one-pass
//! log-likelihood (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2) or a DDM's I-MMSE
//! estimate (Kong et al. 2023, arXiv:2302.03792), in either 8-bit convention.
use tch::{Kind, Tensor};

use super::Batches;
use crate::likelihood::{ddm_log_prob, dequantize, log_prob, Dequantization};
use crate::model::Model;
use crate::rng::Rng;
use crate::schedule::Levels;
use crate::{Error, Result};

/// How a log-likelihood is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    /// A CDM's logits, one forward pass (Theorem 3.2): log p_t at this level.
    OnePass(usize),
    /// A DDM's I-MMSE estimate with this many network evaluations per point.
    Immse(usize),
}

impl Estimator {
    /// The bits/dim estimator of a model: a CDM's one pass at level 0, a DDM's I-MMSE with
    /// `evaluations` evaluations per point.
    pub fn for_nll(model: &Model, evaluations: usize) -> Self {
        match model {
            Model::Cdm(_) => Estimator::OnePass(0),
            Model::Ddm(_) => Estimator::Immse(evaluations),
        }
    }

    /// The estimators of log p_1, the density at the smallest noise level, that a model offers
    /// with `budgets` network evaluations per point, as (evaluations, estimator): a CDM's one
    /// pass (one evaluation, whatever the budgets), a DDM's I-MMSE at each budget.
    pub fn of_log_p1(model: &Model, budgets: &[usize]) -> Vec<(usize, Self)> {
        match model {
            Model::Cdm(_) => vec![(1, Estimator::OnePass(1))],
            Model::Ddm(_) => budgets.iter().map(|&k| (k, Estimator::Immse(k))).collect(),
        }
    }

    /// What it estimates, for a report: which density, by what, over which levels.
    pub fn describe(&self, model: &Model) -> String {
        match *self {
            Estimator::OnePass(t) => format!("one forward pass, log p_{t}"),
            Estimator::Immse(k) => match model.schedule().levels() {
                Levels::Discrete => format!("I-MMSE, {k} evaluations, log p_1 (density at level 1)"),
                Levels::Continuous(p) => {
                    let (lo, hi) = p.range();
                    format!("I-MMSE, {k} evaluations, log p_0 over log SNR [{lo:.1}, {hi:.1}]")
                }
            },
        }
    }
}

/// log p(x) in nats per point ([N], CPU Double) of `x` ([N, ..]) under `model`, `how` says
/// how; the I-MMSE draws come from per-chunk streams of `seed`.
pub fn log_likelihood(model: &Model, x: &Tensor, how: Estimator, batches: &Batches, seed: u64) -> Result<Tensor> {
    let out = batches.map(x, |chunk, start| match (how, model) {
        (Estimator::OnePass(t), Model::Cdm(c)) => log_prob(c, chunk, t, None),
        (Estimator::Immse(k), Model::Ddm(d)) => {
            ddm_log_prob(d, chunk, None, k, &mut Rng::stream(seed, 0x1_0000 + start as u64))
        }
        (Estimator::OnePass(_), Model::Ddm(_)) => {
            Err(Error::Config("the one-pass likelihood needs a CDM; the model is a DDM".into()))
        }
        (Estimator::Immse(_), Model::Cdm(_)) => {
            Err(Error::Config("the I-MMSE likelihood is for a DDM; the model is a CDM".into()))
        }
    })?;
    Ok(out.to_kind(Kind::Double))
}

/// Per-point NLL in bits/dim ([N], CPU Double) of `x` ([N, ..]). With a `convention`, `x`
/// holds 8-bit images, dequantized as it says (draws from `seed`), and the figure is bits/dim
/// of the 8-bit values, −log p/(D ln 2) + 7; without one, of the continuous density.
pub fn nll_bits_per_dim(
    model: &Model,
    x: &Tensor,
    how: Estimator,
    convention: Option<Dequantization>,
    batches: &Batches,
    seed: u64,
) -> Result<Tensor> {
    let points = match convention {
        Some(c) => dequantize(x, c, &mut Rng::new(seed)),
        None => x.shallow_clone(),
    };
    let bpd = log_likelihood(model, &points, how, batches, seed)? / (-super::dim_of(x) * std::f64::consts::LN_2);
    Ok(if convention.is_some() { bpd + 7.0 } else { bpd })
}
