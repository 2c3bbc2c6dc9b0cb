//! Exact log-likelihood in one forward pass (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2):
//! log p_t(x) = log(p(T+1)/p(t)) + l_t(x) - l_{T+1}(x) + log N(x; 0, I). Levels are drawn
//! uniformly in training, so the prior ratio is zero.
use tch::{Kind, Tensor};

use crate::classifier::Classifier;
use crate::denoiser::Denoiser;
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

/// Truncation of the logistic proposal over log SNR, in scale units either side of its centre.
const LOGSNR_CLIP: f64 = 3.0;

/// log p(x) per sample ([B]) of the model behind a noise predictor, by the pointwise I-MMSE
/// identity (Kong et al. 2023, arXiv:2302.03792): with z_γ = √σ(γ)·x + √σ(−γ)·ε,
///
/// −log p(x) = −log N(x; 0, I) + ½ ∫ E_ε[‖ε − ε̂(z_γ, γ)‖² − ‖ε − ε̂_N(z_γ, γ)‖²] dγ,
///
/// where ε̂_N(z) = √σ(−γ)·z is the optimal predictor for N(0, I) data (its error on the same
/// draw of ε serves as a control variate). The integral is taken over `logsnr_range`, outside
/// which the integrand must be negligible (it vanishes at both ends for a density smoothed by
/// some noise; see [`noised_predictor`]), with `evaluations` calls of `eps_hat(z, γ)` (γ: [B]),
/// at γ drawn stratified from a logistic truncated to the range, one ε each, weighted by
/// 1/density.
pub fn immse_log_prob(
    eps_hat: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    evaluations: usize,
    logsnr_range: (f64, f64),
    rng: &mut crate::rng::Rng,
) -> Result<Tensor> {
    let (lo, hi) = logsnr_range;
    if evaluations == 0 || lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
        return Err(crate::Error::Config(format!(
            "I-MMSE needs evaluations ≥ 1 and a log-SNR range lo < hi, got {evaluations} and ({lo}, {hi})"
        )));
    }
    let (loc, scale) = ((lo + hi) / 2.0, (hi - lo) / (2.0 * LOGSNR_CLIP));
    let batch = x.size()[0];
    let per_sample = |t: &Tensor| t.reshape([batch, -1]).sum_dim_intlist(1, false, Kind::Double);
    let edge = 1.0 / (1.0 + LOGSNR_CLIP.exp());
    let mut integral = Tensor::zeros([batch], (Kind::Double, x.device()));
    for k in 0..evaluations {
        // Stratified: sample k takes quantile (k + u)/K of the truncated logistic.
        let u = (rng.uniform(&[batch], Kind::Double).to_device(x.device()) + k as f64) / evaluations as f64;
        let p = u * (1.0 - 2.0 * edge) + edge;
        let v = (&p / (p.ones_like() - &p)).log();
        let gamma = &v * scale + loc;
        let weight = (v.sigmoid() * (-&v).sigmoid()).reciprocal() * (scale * (LOGSNR_CLIP / 2.0).tanh());
        let signal = per_point(&gamma.sigmoid().sqrt(), x);
        let noise = per_point(&(-&gamma).sigmoid().sqrt(), x);
        let eps = rng.normal(&x.size(), x.kind()).to_device(x.device());
        let z = x * signal + &eps * &noise;
        let error = per_sample(&(eps_hat(&z, &gamma)? - &eps).square());
        // The same ε through the Gaussian's predictor: its expectation is the Gaussian term,
        // and it cancels most of the noise of a single draw.
        let gaussian_error = per_sample(&(&z * noise - &eps).square());
        integral += weight * (error - gaussian_error) / evaluations as f64;
    }
    Ok(log_standard_normal(&x.to_kind(Kind::Double)) - integral * 0.5)
}

/// A noise predictor for the data after extra noise at log SNR `alpha` (p_α, the law of
/// √σ(α)·x0 + √σ(−α)·ε), from one for the clean data: noising p_α at γ is noising the data at
/// γ' = logit(σ(γ)σ(α)) < α, and E[ε | z] = √(σ(−γ)/σ(−γ'))·ε̂(z, γ') (DESIGN.md section 3).
/// So p_α needs the predictor only below α: a DDM whose smallest level is α gives log p_α
/// at any point by [`immse_log_prob`].
pub fn noised_predictor(
    eps_hat: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    alpha: f64,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    let signal_alpha = 1.0 / (1.0 + (-alpha).exp());
    move |z: &Tensor, gamma: &Tensor| {
        let signal = gamma.sigmoid() * signal_alpha;
        let inner = (&signal / (signal.ones_like() - &signal)).log();
        let scale = ((-gamma).sigmoid() / (signal.ones_like() - &signal)).sqrt();
        Ok(eps_hat(z, &inner)? * per_point(&scale, z))
    }
}

/// How far above the smallest level's log SNR the integral for p_α runs: the integrand of a
/// density smoothed at σ_α dies off like e^{−(γ − α)}, so 12 leaves ~1e-5 of it out.
const ABOVE_ALPHA: f64 = 12.0;

/// A DDM's log p_1(x) per sample ([B]): the density at its smallest noise level t = 1 (σ_1 =
/// 0.01 for the linear schedule), the level a discrete-time DDM knows least about, by
/// [`immse_log_prob`] over [`noised_predictor`] with α = γ_1, asking the network for
/// fractional levels between its integer ones. A CDM gives the same quantity exactly in one
/// pass ([`log_prob`] at t = 1), so the two compare directly.
pub fn ddm_log_prob(
    model: &Denoiser,
    x: &Tensor,
    labels: Option<&Tensor>,
    evaluations: usize,
    rng: &mut crate::rng::Rng,
) -> Result<Tensor> {
    let schedule = model.schedule();
    let alpha = schedule.logsnr(1);
    let eps_hat = |z: &Tensor, gamma: &Tensor| {
        let gammas = Vec::<f64>::try_from(gamma.to_device(tch::Device::Cpu))?;
        let levels: Vec<f64> = gammas.iter().map(|&g| schedule.level_at_logsnr(g)).collect();
        let levels = Tensor::from_slice(&levels).to_device(z.device());
        tch::no_grad(|| model.eps(z, &levels, labels, false)).map(|e| e.to_kind(Kind::Double))
    };
    let range = (schedule.logsnr(schedule.timesteps()), alpha + ABOVE_ALPHA);
    immse_log_prob(noised_predictor(eps_hat, alpha), x, evaluations, range, rng)
}
