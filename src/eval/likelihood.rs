//! Bits/dim of held-out points by the estimator that suits the model: a CDM's exact one-pass
//! log-likelihood (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2) or a DDM's I-MMSE
//! estimate (Kong et al. 2023, arXiv:2302.03792), in either 8-bit convention.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{mean, Batches};
use crate::data::Dataset;
use crate::likelihood::{
    bits_per_dim, bits_per_dim_8bit, convention_for, ddm_log_prob, dequantize, dequantize_rows, log_prob,
    Dequantization,
};
use crate::model::Model;
use crate::rng::Rng;
use crate::sample::Noise;
use crate::schedule::{levels_like, Levels};
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
        Some(c) => dequantize_rows(x, c, &mut Rng::new(seed), batches.first_row),
        None => x.shallow_clone(),
    };
    let bpd = log_likelihood(model, &points, how, batches, seed)? / (-super::dim_of(x) * std::f64::consts::LN_2);
    Ok(if convention.is_some() { bpd + 7.0 } else { bpd })
}

/// Which points of a data set to score in one pass, and how 8-bit images count.
#[derive(Clone, Copy, Debug)]
pub struct PointsToScore {
    /// The level t whose density p_t is scored: built-in densities are noised to it first.
    pub level: usize,
    /// Points drawn from a built-in density (files are scored whole).
    pub n: usize,
    /// Seed of drawn points, their noise and the dequantization.
    pub seed: u64,
    /// 8-bit images at level 0 are scored as 8-bit data, uniformly dequantized unless told
    /// otherwise; `None` with `continuous` scores them as points of the [−1, 1] scale.
    pub dequantize: Option<Dequantization>,
    pub continuous: bool,
}

/// The one-pass log-likelihood of a data set's points, with the 8-bit figure for 8-bit images
/// and the error against the exact density where the data has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointScores {
    pub level: usize,
    pub n: usize,
    pub dim: f64,
    pub log_likelihood_nats_per_dim: f64,
    pub nll_bits_per_dim: f64,
    /// 8-bit images: which points the continuous density was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_points: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_dim_8bit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_dim_8bit_convention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_nats_per_dim: Option<f64>,
    /// Mean |learned − exact| log-density per point, in nats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_abs_error_nats: Option<f64>,
}

/// `cdm nll --json`: the scores, with the run and the data they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NllReport {
    pub ckpt: String,
    pub data: String,
    #[serde(flatten)]
    pub scores: PointScores,
}

impl NllReport {
    /// Reads a `cdm nll --json` output.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not a `cdm nll --json` output: {e}", path.display())))
    }
}

/// Scores the points `which` picks from `data` under the CDM `model` in one forward pass each
/// (Theorem 3.2): the summary, and log p_t per point in nats ([N], CPU Double).
pub fn score_points(
    model: &Model,
    data: &Dataset,
    which: &PointsToScore,
    batches: &Batches,
) -> Result<(PointScores, Tensor)> {
    let schedule = model.schedule();
    schedule.check_level(which.level)?;
    let clean = data.eval_points(which.n, which.seed);
    // Built-in data are clean samples; at t > 0 score them noised to level t.
    let x = match data.density() {
        Some(_) if which.level > 0 => {
            let eps = Noise::new(which.seed, 0, clean.size()[0] as usize).normal(
                &clean.size()[1..],
                Kind::Double,
                tch::Device::Cpu,
            );
            schedule.add_noise(&clean, &eps, &levels_like(which.level, &clean))
        }
        _ => clean,
    };
    let how = convention_for(&x, which.level, which.dequantize, which.continuous)?;
    let x = match how {
        Some(how) => dequantize(&x, how, &mut Rng::new(which.seed)),
        None => x,
    };
    let log_p = log_likelihood(model, &x, Estimator::OnePass(which.level), batches, which.seed)?;
    let dim = super::dim_of(&x);
    let nats_per_dim = mean(&log_p) / dim;
    let abar = schedule.alpha_bar(which.level);
    let exact = data.density().and_then(|d| match which.level {
        0 => Some(d.log_prob(&x)),
        _ => d.log_prob_noisy(&x, abar),
    });
    let scores = PointScores {
        level: which.level,
        n: x.size()[0] as usize,
        dim,
        log_likelihood_nats_per_dim: nats_per_dim,
        nll_bits_per_dim: bits_per_dim(nats_per_dim),
        continuous_points: how.map(|how| {
            match how {
                Dequantization::Uniform => "the dequantized points on the [−1, 1] scale",
                Dequantization::Paper => "the 8-bit grid points on the [−1, 1] scale",
            }
            .into()
        }),
        bits_per_dim_8bit: how.map(|_| bits_per_dim_8bit(nats_per_dim)),
        bits_per_dim_8bit_convention: how.map(|how| {
            match how {
                Dequantization::Uniform => "uniform dequantization (upper bound on the discrete NLL)",
                Dequantization::Paper => "paper convention: no dequantization, +7 (not a bound)",
            }
            .into()
        }),
        exact_nats_per_dim: exact.as_ref().map(|e| mean(e) / dim),
        mean_abs_error_nats: exact.as_ref().map(|e| mean(&(&log_p - e).abs())),
    };
    Ok((scores, log_p))
}
