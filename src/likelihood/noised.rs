//! Two adapters of a noise predictor (Wu et al. 2024, arXiv:2407.08946, section 3): the predictor of the data after
//! extra noise at log SNR α, and the noise classifier inside a denoiser, log p_ζ(z) − log p(z),
//! by I-MMSE with shared draws (Wu et al. 2024, arXiv:2407.08946).
use tch::Tensor;

use super::{per_point, per_sample_sum_of_squares};
use crate::schedule::LogSnrProposal;
use crate::Result;

/// γ′ = logit(σ(γ)·σ(α)) and √(σ(−γ)/σ(−γ′)) per sample (γ [B], α broadcast against it):
/// noising p_α at γ is noising the data at γ′ < min(γ, α), and E[ε | z] = √(σ(−γ)/σ(−γ′))·ε̂(z, γ′)
/// (the CDL paper's section 3).
fn noised_logsnr(gamma: &Tensor, alpha: &Tensor) -> (Tensor, Tensor) {
    let signal = gamma.sigmoid() * alpha.to_device(gamma.device()).to_kind(gamma.kind()).sigmoid();
    let inner = (&signal / (signal.ones_like() - &signal)).log();
    let scale = ((-gamma).sigmoid() / (signal.ones_like() - &signal)).sqrt();
    (inner, scale)
}

/// A noise predictor for the data after extra noise at log SNR `alpha` (p_α, the law of
/// √σ(α)·x0 + √σ(−α)·ε), from one for the clean data, by [`noised_logsnr`]. `alpha` is one
/// value (a 0-dim tensor) or one per sample ([B]). So p_α needs the predictor only below α: a
/// DDM whose smallest level is α gives log p_α at any point by [`immse_log_prob`](super::immse_log_prob).
pub fn noised_predictor(
    eps_hat: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    alpha: Tensor,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    move |z: &Tensor, gamma: &Tensor| {
        let (inner, scale) = noised_logsnr(gamma, &alpha);
        Ok(eps_hat(z, &inner)? * per_point(&scale, z))
    }
}

/// The noise classifier inside a denoiser (Wu et al. 2024, arXiv:2407.08946): the
/// logit log p_ζ(z) − log p(z) per point of `z` ([N, ..]) against extra noise at log SNR
/// `zeta` ([N]), each density by [`immse_log_prob`](super::immse_log_prob) with `draws` Monte-Carlo draws per point.
/// Both estimates share their draws (γ stratified over `proposal`, ε), so h_G, mmse_G and the
/// reference cancel and the logit is ½·mean_i w_i(‖ε_i − ε̂(z_i, γ_i)‖² − ‖ε_i − ε̂_ζ(z_i, γ_i)‖²),
/// far less noisy than the difference of two independent estimates. One call of `eps_hat` on
/// the 2·N·draws noisy points; differentiable in what `eps_hat` depends on. [N], in z's kind.
pub fn noise_logits(
    eps_hat: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    z: &Tensor,
    zeta: &Tensor,
    proposal: &LogSnrProposal,
    draws: usize,
    rng: &mut crate::rng::Rng,
) -> Result<Tensor> {
    let (n, draws) = (z.size()[0], draws.max(1) as i64);
    let points = z.repeat_interleave_self_int(draws, 0, None);
    let zeta = zeta.to_device(z.device()).repeat_interleave_self_int(draws, 0, None);
    let (gamma, weight) = proposal.draw((n * draws) as usize, draws as usize, rng, z.device());
    let eps = rng.normal(&points.size(), z.kind()).to_device(z.device());
    let noisy =
        &points * per_point(&gamma.sigmoid().sqrt(), &points) + &eps * per_point(&(-&gamma).sigmoid().sqrt(), &points);
    let (inner, scale) = noised_logsnr(&gamma, &zeta);
    let both = eps_hat(&Tensor::cat(&[&noisy, &noisy], 0), &Tensor::cat(&[&gamma, &inner], 0))?;
    let (clean_eps, noised_eps) =
        (both.narrow(0, 0, n * draws), both.narrow(0, n * draws, n * draws) * per_point(&scale, &points));
    let difference = per_sample_sum_of_squares(&(clean_eps - &eps)) - per_sample_sum_of_squares(&(noised_eps - &eps));
    Ok((weight.to_kind(z.kind()) * difference).reshape([n, draws]).mean_dim(1, false, z.kind()) * 0.5)
}
