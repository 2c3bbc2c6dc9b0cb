//! log p(x) of the model behind a noise predictor by the pointwise I-MMSE identity (Kong et al.
//! 2023, arXiv:2302.03792; the estimator of Wu et al. 2024, arXiv:2407.08946), differentiable
//! in the network's weights, and a DDM's likelihood by it.
use tch::{Kind, Tensor};

use super::noised::noised_predictor;
use super::{per_point, per_sample_sum_of_squares, GaussianReference};
use crate::denoiser::Denoiser;
use crate::schedule::{Levels, LogSnrProposal};
use crate::Result;

/// One Monte-Carlo term of the I-MMSE integral per row of `x` ([B, ..]), at log SNR `gamma`
/// with importance weight `weight` (each [B]) and noise `eps` (like x):
/// w·(‖ε − ε̂(z_γ, γ)‖² − ‖ε − ε̂_G(z_γ, γ)‖²), z_γ = √σ(γ)·x + √σ(−γ)·ε; [B], with the graph
/// of `eps_hat` (differentiable in the network's weights).
fn immse_terms(
    eps_hat: &impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    reference: &GaussianReference,
    gamma: &Tensor,
    weight: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let z = x * per_point(&gamma.sigmoid().sqrt(), x) + eps * per_point(&(-gamma).sigmoid().sqrt(), x);
    let error = per_sample_sum_of_squares(&(eps_hat(&z, gamma)? - eps));
    // The same ε through the reference's predictor: its expectation is the Gaussian's term,
    // and it cancels most of the noise of a single draw.
    let reference_error = per_sample_sum_of_squares(&(reference.eps(&z, gamma) - eps));
    Ok(weight.to_kind(x.kind()) * (error - reference_error))
}

/// log p(x) per sample ([B]) of the model behind a noise predictor, by the pointwise I-MMSE
/// identity (Kong et al. 2023, arXiv:2302.03792; the estimator of Wu et al. 2024,
/// arXiv:2407.08946, section 3): with z_γ = √σ(γ)·x + √σ(−γ)·ε,
///
/// −log p(x) = h_G + ½ ∫ (E_ε‖ε − ε̂(z_γ, γ)‖² − mmse_G(γ)) dγ,
///
/// taken here in the equivalent form −log N_G(x) + ½ ∫ E_ε[‖ε − ε̂‖² − ‖ε − ε̂_G‖²] dγ, where
/// ε̂_G is the optimal predictor of the reference Gaussian G: pointwise, its error integrates
/// to 2(−log N_G(x) − h_G) + ∫ mmse_G, so both forms have one expectation, and the second,
/// with the same ε through both predictors, is exact on Gaussian data and far less noisy.
/// The integral is taken over the support of `proposal` (outside it the integrand must be
/// negligible: it dies off at both ends for a density smoothed by some noise; see
/// [`noised_predictor`]), with `evaluations` calls of `eps_hat(z, γ)` (γ: [B]) at γ
/// stratified over the proposal, one ε each, weighted by 1/q(γ). Differentiable in whatever
/// `eps_hat` depends on; in x's kind.
pub fn immse_log_prob(
    eps_hat: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    reference: &GaussianReference,
    proposal: &LogSnrProposal,
    evaluations: usize,
    rng: &mut crate::rng::Rng,
) -> Result<Tensor> {
    if evaluations == 0 || !(proposal.scale > 0.0 && proposal.loc.is_finite()) {
        return Err(crate::Error::Config(format!(
            "I-MMSE needs evaluations ≥ 1 and a log-SNR proposal with a positive scale, got {evaluations} and {proposal:?}"
        )));
    }
    let batch = x.size()[0] as usize;
    let mut integral = Tensor::zeros([batch as i64], (x.kind(), x.device()));
    for k in 0..evaluations {
        // Stratified: every sample of pass k takes quantile (k + u)/K of the proposal.
        let u = (rng.uniform(&[batch as i64], Kind::Double) + k as f64) / evaluations as f64;
        let (gamma, weight) = proposal.at_quantiles(&u);
        let (gamma, weight) = (gamma.to_device(x.device()), weight.to_device(x.device()));
        let eps = rng.normal(&x.size(), x.kind()).to_device(x.device());
        integral += immse_terms(&eps_hat, x, reference, &gamma, &weight, &eps)? / evaluations as f64;
    }
    Ok(reference.log_density(x) - integral * 0.5)
}

/// How far above the smallest level's log SNR the integral for p_α runs: the integrand of a
/// density smoothed at σ_α dies off like e^{−(γ − α)}, so 12 leaves ~1e-5 of it out.
const ABOVE_ALPHA: f64 = 12.0;

/// log p(x) per sample ([B]) of a DDM by [`immse_log_prob`], relative to its Gaussian base's
/// per-dimension moments (N(0, I) without one), asking the network only where it was
/// trained. A DDM on continuous levels gives log p(x) over its own log-SNR range. A DDM on
/// integer levels gives log p_1(x): the density at its smallest noise level t = 1 (σ_1 = 0.01
/// for the linear schedule), the level a discrete-time DDM knows least about, through
/// [`noised_predictor`] with α = γ_1, asking the network for fractional levels between its
/// integer ones; a CDM gives the same quantity exactly in one pass ([`log_prob`](super::log_prob) at t = 1), so
/// the two compare directly.
pub fn ddm_log_prob(
    model: &Denoiser,
    x: &Tensor,
    labels: Option<&Tensor>,
    evaluations: usize,
    rng: &mut crate::rng::Rng,
) -> Result<Tensor> {
    let schedule = model.schedule();
    let reference = model.reference();
    let eps_hat =
        |z: &Tensor, gamma: &Tensor| tch::no_grad(|| model.eps(z, &schedule.levels_at_logsnr(gamma), labels, false));
    let log_p = match schedule.levels() {
        Levels::Continuous(proposal) => immse_log_prob(eps_hat, x, &reference, &proposal, evaluations, rng)?,
        Levels::Discrete => {
            let alpha = schedule.logsnr(1);
            let proposal = LogSnrProposal::covering(schedule.logsnr(schedule.timesteps()), alpha + ABOVE_ALPHA)?;
            immse_log_prob(noised_predictor(eps_hat, Tensor::from(alpha)), x, &reference, &proposal, evaluations, rng)?
        }
    };
    Ok(log_p.to_kind(Kind::Double))
}
