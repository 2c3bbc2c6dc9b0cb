//! The noise classifier inside a DDM (Wu et al. 2024, arXiv:2407.08946): how well its logit
//! log p_ζ(z) − log p(z) tells held-out points from the same points noised at log SNR ζ. This is
//! what the contrastive diffusion loss trains; on held-out data it shows whether the term had
//! anything left to teach (accuracy 1 from the start) or nothing it could learn (chance). Beside
//! it, on the same points: the Bayes classifier where the data's density is known after noise
//! (the floor), and a CDM's own classifier, which a CDM is by construction.
use tch::{Kind, Tensor};

use super::Batches;
use crate::classifier::Classifier;
use crate::data::KnownDensity;
use crate::likelihood::log_prob_at_levels;
use crate::loss::{cdl_loss, CdlConfig, CdlTerm, ContrastPairs};
use crate::model::Model;
use crate::rng::Rng;
use crate::schedule::LogSnrProposal;
use crate::{Error, Result};

/// The contrastive diffusion loss on held-out points, without its gradient.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseClassifierScore {
    /// Points scored, each kept or noised by a fair coin.
    pub n: usize,
    /// Mean softplus(y·(log p_ζ(z) − log p(z))); ln 2 is chance.
    pub loss: f64,
    /// Share of points the classifier labels right (kept or noised).
    pub accuracy: f64,
}

/// [`cdl_loss`] of a DDM over every point of `x` ([N, ..]), `cdl.draws` Monte-Carlo draws per
/// log-density, as many points per call as fit `batches.batch_size` network inputs (each point
/// costs 2·draws); draws from per-chunk streams of `seed`.
pub fn noise_classifier(
    model: &Model,
    x: &Tensor,
    cdl: &CdlConfig,
    batches: &Batches,
    seed: u64,
) -> Result<NoiseClassifierScore> {
    let Model::Ddm(ddm) = model else {
        return Err(Error::Config("the noise classifier of the contrastive loss is a DDM's".into()));
    };
    over_chunks(x, cdl, batches, seed, |chunk, cdl, rng| tch::no_grad(|| cdl_loss(ddm, chunk, None, cdl, false, rng)))
}

/// The Bayes classifier on the same points, kept or noised as [`noise_classifier`] with the same
/// `cdl`, `batches` and `seed` has them (`trained`: the model's log-SNR range, for ζ drawn from
/// it): its logit is the exact log p_ζ(z) − log p(z), the floor the DDM's loss can reach.
pub fn exact_noise_classifier(
    density: &dyn KnownDensity,
    trained: &LogSnrProposal,
    x: &Tensor,
    cdl: &CdlConfig,
    batches: &Batches,
    seed: u64,
) -> Result<NoiseClassifierScore> {
    over_chunks(x, cdl, batches, seed, |chunk, cdl, rng| {
        let pairs = ContrastPairs::draw(chunk, cdl.zeta, trained, rng);
        let zeta = Vec::<f64>::try_from(pairs.zeta.to_device(tch::Device::Cpu))?;
        let noised: Vec<Tensor> = zeta
            .iter()
            .enumerate()
            .map(|(i, &zeta)| {
                let alpha_bar = 1.0 / (1.0 + (-zeta).exp());
                density
                    .log_prob_noisy(&pairs.z.narrow(0, i as i64, 1), alpha_bar)
                    .ok_or_else(|| Error::Config("this density has no closed form after extra noise".into()))
            })
            .collect::<Result<_>>()?;
        Ok(pairs.score(&(Tensor::cat(&noised, 0) - density.log_prob(&pairs.z))))
    })
}

/// A CDM's noise classifier on the same points as [`noise_classifier`] with the same `cdl`,
/// `batches` and `seed` (ζ from `cdl.zeta`, the trained range being the schedule's): its logit
/// log p_ζ(z) − log p_0(z) is read off one forward pass, p_ζ being the density at the level of
/// log SNR ζ, interpolated linearly between the integer levels around it (clamped to 1..=T). No
/// Monte-Carlo draws: this is what a CDM is by construction.
pub fn cdm_noise_classifier(
    classifier: &Classifier,
    x: &Tensor,
    cdl: &CdlConfig,
    batches: &Batches,
    seed: u64,
) -> Result<NoiseClassifierScore> {
    let schedule = classifier.schedule();
    let trained = schedule.logsnr_proposal();
    let levels: Vec<usize> = (0..=schedule.timesteps()).collect();
    over_chunks(x, cdl, batches, seed, |chunk, cdl, rng| {
        let pairs = ContrastPairs::draw(chunk, cdl.zeta, &trained, rng);
        let log_p = log_prob_at_levels(classifier, &pairs.z, &levels, None)?.to_kind(Kind::Double);
        let level = schedule.levels_at_logsnr(&pairs.zeta).to_device(log_p.device());
        let below = level.floor();
        let above = (&below + 1.0).clamp_max(schedule.timesteps() as f64);
        let at = |t: &Tensor| log_p.gather(1, &t.to_kind(Kind::Int64).unsqueeze(1), false).squeeze_dim(1);
        let share = &level - &below;
        let log_p_zeta = at(&below) * (share.ones_like() - &share) + at(&above) * &share;
        Ok(pairs.score(&(log_p_zeta - log_p.select(1, 0))))
    })
}

/// Scores `x` in chunks that fit `batches` (each point costs 2·draws network inputs), chunk k
/// drawing from stream k of `seed`, and averages over points.
fn over_chunks(
    x: &Tensor,
    cdl: &CdlConfig,
    batches: &Batches,
    seed: u64,
    term: impl Fn(&Tensor, &CdlConfig, &mut Rng) -> Result<CdlTerm>,
) -> Result<NoiseClassifierScore> {
    let draws = cdl.draws.max(1);
    let per_call = (batches.batch_size / (2 * draws)).max(1);
    let chunked = Batches { batch_size: per_call, ..*batches };
    let scores = chunked.map(x, |chunk, start| {
        let n = chunk.size()[0];
        let cdl = CdlConfig { images: n as usize, draws, ..*cdl };
        let term = term(chunk, &cdl, &mut Rng::stream(seed, start as u64))?;
        let weight = n as f64;
        Ok(Tensor::from_slice(&[term.loss.double_value(&[]) * weight, term.accuracy * weight, weight]).reshape([1, 3]))
    })?;
    let sums = Vec::<f64>::try_from(scores.sum_dim_intlist(0, false, tch::Kind::Double))?;
    Ok(NoiseClassifierScore { n: sums[2] as usize, loss: sums[0] / sums[2], accuracy: sums[1] / sums[2] })
}
