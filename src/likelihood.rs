//! Exact log-likelihood in one forward pass (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2):
//! log p_t(x) = log(p(T+1)/p(t)) + l_t(x) - l_{T+1}(x) + log N(x; 0, I). Levels are drawn
//! uniformly in training, so the prior ratio is zero. For a denoiser: log p(x) and log p_ζ(z)
//! by the I-MMSE identity (Kong et al. 2023, arXiv:2302.03792), differentiable in the
//! network's weights, and the noise classifier they make (Wu et al. 2024, arXiv:2407.08946).
use tch::{Kind, Tensor};

use crate::classifier::Classifier;
use crate::denoiser::Denoiser;
use crate::schedule::{Levels, LogSnrProposal};
use crate::Result;

/// log N(x; 0, I) per sample: [B] for x: [B, ..].
pub fn log_standard_normal(x: &Tensor) -> Tensor {
    let dim = x.size()[1..].iter().product::<i64>() as f64;
    x.square().flatten(1, -1).sum_dim_intlist(1, false, x.kind()) * -0.5 - 0.5 * dim * (2.0 * std::f64::consts::PI).ln()
}

/// log p_t(x) in nats per sample ([B]) at level `t` (0 = the data density), for x: [B, ..].
pub fn log_prob(model: &Classifier, x: &Tensor, t: usize, labels: Option<&Tensor>) -> Result<Tensor> {
    Ok(log_prob_at_levels(model, x, &[t], labels)?.squeeze_dim(1))
}

/// log p_t(x) in nats ([B, L]) at each of `levels`, all from one forward pass: Theorem 3.2 for
/// every class of the logits, log p_t = log N(x; 0, I) + l_t − l_{T+1}.
pub fn log_prob_at_levels(model: &Classifier, x: &Tensor, levels: &[usize], labels: Option<&Tensor>) -> Result<Tensor> {
    model.check_input(x)?;
    for &t in levels {
        model.schedule().check_level(t)?;
    }
    let logits = tch::no_grad(|| model.logits(x, labels, false))?;
    let index = Tensor::from_slice(&levels.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(x.device());
    let last = logits.size()[1] - 1;
    let f = logits.narrow(1, last, 1) - logits.index_select(1, &index);
    Ok(log_standard_normal(x).unsqueeze(1) - f)
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

/// A per-sample factor `v` ([B]) shaped to broadcast over `like` ([B, ..]), in its kind.
fn per_point(v: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.resize(like.dim(), 1);
    v.to_kind(like.kind()).reshape(&shape[..])
}

/// ‖a‖² per sample: [B, ..] → [B].
fn per_sample_sum_of_squares(a: &Tensor) -> Tensor {
    a.square().flatten(1, -1).sum_dim_intlist(1, false, a.kind())
}

/// The Gaussian the I-MMSE estimate is taken relative to: N(μ, diag λ) in the data's own
/// coordinates (N(0, I) by default, or a fit of the data's per-dimension moments).
pub struct GaussianReference {
    /// μ: [D], f64.
    pub mean: Tensor,
    /// λ: [D], f64, positive.
    pub var: Tensor,
}

impl GaussianReference {
    /// N(0, I) in `dim` dimensions.
    pub fn standard(dim: i64) -> Self {
        GaussianReference {
            mean: Tensor::zeros([dim], (Kind::Double, tch::Device::Cpu)),
            var: Tensor::ones([dim], (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// Per-dimension mean and variance of points `x` ([N, ..]), the variance floored at
    /// `floor` so a never-varying dimension keeps a finite density.
    pub fn fit(x: &Tensor, floor: f64) -> Self {
        let x = x.to_kind(Kind::Double).flatten(1, -1);
        GaussianReference { mean: x.mean_dim(0, false, Kind::Double), var: x.var_dim(0, false, false).clamp_min(floor) }
    }

    /// The Gaussian's entropy h_G = (D/2)·log(2πe) + ½·Σ log λ_k, in nats.
    pub fn entropy(&self) -> f64 {
        let dim = self.var.size()[0] as f64;
        0.5 * dim * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln()
            + 0.5 * self.var.log().sum(Kind::Double).double_value(&[])
    }

    /// mmse_G(γ) = Σ_k σ(γ + log λ_k), its optimal predictor's expected error: [B] for γ [B].
    pub fn mmse(&self, gamma: &Tensor) -> Tensor {
        (gamma.to_kind(Kind::Double).unsqueeze(1) + self.var.to_device(gamma.device()).log().unsqueeze(0))
            .sigmoid()
            .sum_dim_intlist(1, false, Kind::Double)
    }

    /// log N(x; μ, diag λ): [B] for x [B, ..], in x's kind.
    pub fn log_density(&self, x: &Tensor) -> Tensor {
        let (mean, var) = self.on(x);
        let centred = x.flatten(1, -1) - mean;
        let terms = centred.square() / &var + (var * (2.0 * std::f64::consts::PI)).log();
        terms.sum_dim_intlist(1, false, x.kind()) * -0.5
    }

    /// Its optimal noise prediction at log SNR γ ([B]): √σ(−γ)·(z − √σ(γ)·μ)/(σ(γ)·λ + σ(−γ)),
    /// shaped like z.
    pub fn eps(&self, z: &Tensor, gamma: &Tensor) -> Tensor {
        let (mean, var) = self.on(z);
        let gamma = gamma.to_kind(z.kind()).unsqueeze(1);
        let (signal, noise) = (gamma.sigmoid(), (-&gamma).sigmoid());
        let centred = z.flatten(1, -1) - signal.sqrt() * mean;
        (noise.sqrt() * centred / (signal * var + noise)).reshape(z.size())
    }

    /// μ and λ as [1, D] in the kind and on the device of `like`.
    fn on(&self, like: &Tensor) -> (Tensor, Tensor) {
        let cast = |t: &Tensor| t.to_kind(like.kind()).to_device(like.device()).unsqueeze(0);
        (cast(&self.mean), cast(&self.var))
    }
}

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
/// arXiv:2407.08946, DESIGN.md section 3): with z_γ = √σ(γ)·x + √σ(−γ)·ε,
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

/// γ′ = logit(σ(γ)·σ(α)) and √(σ(−γ)/σ(−γ′)) per sample (γ [B], α broadcast against it):
/// noising p_α at γ is noising the data at γ′ < min(γ, α), and E[ε | z] = √(σ(−γ)/σ(−γ′))·ε̂(z, γ′)
/// (DESIGN.md section 3).
fn noised_logsnr(gamma: &Tensor, alpha: &Tensor) -> (Tensor, Tensor) {
    let signal = gamma.sigmoid() * alpha.to_device(gamma.device()).to_kind(gamma.kind()).sigmoid();
    let inner = (&signal / (signal.ones_like() - &signal)).log();
    let scale = ((-gamma).sigmoid() / (signal.ones_like() - &signal)).sqrt();
    (inner, scale)
}

/// A noise predictor for the data after extra noise at log SNR `alpha` (p_α, the law of
/// √σ(α)·x0 + √σ(−α)·ε), from one for the clean data, by [`noised_logsnr`]. `alpha` is one
/// value (a 0-dim tensor) or one per sample ([B]). So p_α needs the predictor only below α: a
/// DDM whose smallest level is α gives log p_α at any point by [`immse_log_prob`].
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
/// `zeta` ([N]), each density by [`immse_log_prob`] with `draws` Monte-Carlo draws per point.
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

/// How far above the smallest level's log SNR the integral for p_α runs: the integrand of a
/// density smoothed at σ_α dies off like e^{−(γ − α)}, so 12 leaves ~1e-5 of it out.
const ABOVE_ALPHA: f64 = 12.0;

/// log p(x) per sample ([B]) of a DDM by [`immse_log_prob`], relative to its Gaussian base's
/// per-dimension moments (N(0, I) without one), asking the network only where it was
/// trained. A DDM on continuous levels gives log p(x) over its own log-SNR range. A DDM on
/// integer levels gives log p_1(x): the density at its smallest noise level t = 1 (σ_1 = 0.01
/// for the linear schedule), the level a discrete-time DDM knows least about, through
/// [`noised_predictor`] with α = γ_1, asking the network for fractional levels between its
/// integer ones; a CDM gives the same quantity exactly in one pass ([`log_prob`] at t = 1), so
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
