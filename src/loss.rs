//! Training losses. The CDM loss (Yadin et al. 2024, arXiv:2402.10095, Algorithm 1):
//! cross-entropy of the level classifier plus the MSE of its input-gradient denoiser, trained
//! by double backprop. The DDM loss (Ho et al. 2020, arXiv:2006.11239, Algorithm 1): the MSE
//! of ε̂ alone, at integer levels or on a continuous log SNR (Kong et al. 2023,
//! arXiv:2302.03792). The contrastive diffusion loss (Wu et al. 2024, arXiv:2407.08946,
//! section 3): the denoiser's own noise classifier, trained to tell data from data noised at
//! a high log SNR ζ.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::classifier::Classifier;
use crate::denoiser::Denoiser;
use crate::device::upload;
use crate::distributed::Shard;
use crate::input::check_labels;
use crate::likelihood::noise_logits;
use crate::rng::Rng;
use crate::schedule::{Levels, LogSnrProposal, Schedule, LOGSNR_CLIP};
use crate::{Error, Result};

/// Weights of the two CDM loss terms; the paper's ablation (its Table 3) sets one to zero.
#[derive(Clone, Debug, PartialEq)]
pub struct LossWeights {
    pub ce: f64,
    pub mse: f64,
    /// Min-SNR-γ weighting of the squared error per level (Hang et al. 2023,
    /// arXiv:2303.09556): min(SNR_t, γ)/SNR_t. `None`: every level weighs the same (Ho et al.).
    pub min_snr: Option<f64>,
    /// The contrastive diffusion loss, added to a DDM's (none when absent).
    pub cdl: Option<CdlConfig>,
    /// Share of a CDM's batch drawn at low levels (see [`level_prior`]); 0: uniform levels.
    pub low_levels: f64,
    /// Strides of the level subsets a CDM's cross-entropy runs over (see [`cdm_loss`]); empty
    /// or `[1]`: every level.
    pub level_strides: Vec<usize>,
}

impl Default for LossWeights {
    /// Both CDM terms at weight 1, uniform levels, nothing else.
    fn default() -> Self {
        LossWeights { ce: 1.0, mse: 1.0, min_snr: None, cdl: None, low_levels: 0.0, level_strides: Vec::new() }
    }
}

/// The prior π over a CDM's T+2 training levels: (1 − f)·uniform + f·π_low with π_low(t) ∝
/// 1/(t + 1), which gives every octave of t the same share. With uniform levels, at T = 1000
/// the clean data is one sample in a thousand, yet the log-ratios of the lowest levels carry
/// most of the likelihood's error (docs/results.md §1); f = 1/2 puts 7% of the batch at t = 0
/// and bounds the squared error's importance weights by 2.
pub fn level_prior(classes: usize, low: f64) -> Vec<f64> {
    let harmonic: f64 = (1..=classes).map(|k| 1.0 / k as f64).sum();
    (0..classes).map(|t| (1.0 - low) / classes as f64 + low / ((t + 1) as f64 * harmonic)).collect()
}

/// Where the extra noise ζ of the contrastive diffusion loss is drawn. The paper's image runs
/// use log SNR [6, 15] (the noise a sampler's last steps must tell from data); its 1-D and 2-D
/// code draws ζ from the model's own log-SNR range, so that most noised points are far from
/// the data, where parallel samplers first evaluate the denoiser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ZetaPrior {
    /// Logistic(10.5, 1.5) truncated at ±3 scales, the paper code's choice.
    #[default]
    Logistic,
    /// Uniform on [6, 15].
    Uniform,
    /// The truncated logistic the model's log SNR is trained and integrated over (the paper
    /// code's 1-D and 2-D experiments).
    Trained,
}

impl std::fmt::Display for ZetaPrior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ZetaPrior::Logistic => "logistic(10.5, 1.5) on [6, 15]",
            ZetaPrior::Uniform => "uniform on [6, 15]",
            ZetaPrior::Trained => "the model's trained log-SNR range",
        })
    }
}

impl ZetaPrior {
    /// `n` draws of ζ, f64 [n]; `trained` is the model's log-SNR range.
    pub fn draw(self, n: usize, trained: &LogSnrProposal, rng: &mut Rng) -> Tensor {
        let u = rng.uniform(&[n as i64], Kind::Double);
        match self {
            ZetaPrior::Logistic => LogSnrProposal { loc: 10.5, scale: 1.5 }.at_quantiles(&u).0,
            ZetaPrior::Uniform => u * 9.0 + 6.0,
            ZetaPrior::Trained => trained.at_quantiles(&u).0,
        }
    }
}

/// Settings of the contrastive diffusion loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdlConfig {
    /// Weight of the term against the denoising loss (1 in the paper).
    pub weight: f64,
    /// Images of each batch that get the term (the paper's code: 2).
    pub images: usize,
    /// Monte-Carlo draws of (γ, ε) per image for each log-density; 0: the batch size (the
    /// paper's code).
    pub draws: usize,
    /// Where ζ is drawn.
    pub zeta: ZetaPrior,
}

impl Default for CdlConfig {
    fn default() -> Self {
        CdlConfig { weight: 1.0, images: 2, draws: 0, zeta: ZetaPrior::Logistic }
    }
}

impl CdlConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Err(Error::Config(format!("cdl.weight must be a positive number, got {}", self.weight)));
        }
        if self.images == 0 {
            return Err(Error::Config("cdl.images must be at least 1".into()));
        }
        Ok(())
    }
}

/// The contrastive diffusion loss of one batch.
pub struct CdlTerm {
    /// mean softplus(y·(log p_ζ(z) − log p(z))), with graph; ln 2 is chance.
    pub loss: Tensor,
    /// How often the noise classifier is right: log p_ζ(z) > log p(z) exactly for noised z.
    pub accuracy: f64,
}

/// The points a noise classifier is asked about: each of `x` kept (y = +1, z = x) or noised at
/// a log SNR ζ (y = −1) by a fair coin.
pub struct ContrastPairs {
    /// z [n, ..].
    pub z: Tensor,
    /// ζ of every point, kept ones too (f64 [n]).
    pub zeta: Tensor,
    /// Whether each point was noised (bool [n]).
    pub noised: Tensor,
}

impl ContrastPairs {
    /// Draws the coins, ζ from `prior` (`trained`: the model's log-SNR range) and the noise.
    pub fn draw(x: &Tensor, prior: ZetaPrior, trained: &LogSnrProposal, rng: &mut Rng) -> Self {
        let n = x.size()[0];
        let noised = rng.uniform(&[n], Kind::Double).lt(0.5).to_device(x.device());
        let zeta = prior.draw(n as usize, trained, rng).to_device(x.device());
        let eps = rng.normal(&x.size(), x.kind()).to_device(x.device());
        let shape = |v: &Tensor| {
            let mut dims = vec![-1i64];
            dims.resize(x.dim(), 1);
            v.to_kind(x.kind()).reshape(&dims[..])
        };
        let noisy = x * shape(&zeta.sigmoid().sqrt()) + eps * shape(&(-&zeta).sigmoid().sqrt());
        let z = noisy.where_self(&shape(&noised).to_kind(Kind::Bool), x);
        ContrastPairs { z, zeta, noised }
    }

    /// The loss mean softplus(y·ℓ) and the accuracy of the logits ℓ = log p_ζ(z) − log p(z) ([n]).
    pub fn score(&self, logits: &Tensor) -> CdlTerm {
        let sign = self.noised.to_kind(logits.kind()) * -2.0 + 1.0;
        let loss = (&sign * logits).softplus().mean(logits.kind());
        let right = logits.gt(0.0).eq_tensor(&self.noised).to_kind(Kind::Double).mean(Kind::Double);
        CdlTerm { loss, accuracy: right.double_value(&[]) }
    }
}

/// The contrastive diffusion loss (Wu et al. 2024, arXiv:2407.08946) on the first
/// `cdl.images` points of `x0` ([B, ..]), the [`ContrastPairs`] of ζ drawn from `cdl.zeta`,
/// with the denoiser's logit ℓ = log p_ζ(z) − log p(z) from [`noise_logits`], over the log-SNR
/// range the model was trained on. Differentiable in the network's weights; `train` runs the
/// network in training mode (dropout).
pub fn cdl_loss(
    model: &Denoiser,
    x0: &Tensor,
    labels: Option<&Tensor>,
    cdl: &CdlConfig,
    train: bool,
    rng: &mut Rng,
) -> Result<CdlTerm> {
    cdl.validate()?;
    let batch = x0.size()[0];
    let n = (cdl.images as i64).min(batch);
    let draws = if cdl.draws == 0 { batch } else { cdl.draws as i64 };
    let proposal = model.schedule().logsnr_proposal();
    let pairs = ContrastPairs::draw(&x0.narrow(0, 0, n), cdl.zeta, &proposal, rng);
    // noise_logits asks for the clean-level pass, then the noised one, each point's draws
    // contiguous: the labels follow that order.
    let labels = labels.map(|l| l.narrow(0, 0, n).repeat_interleave_self_int(draws, 0, None).repeat([2]));
    let eps_hat = |z: &Tensor, gamma: &Tensor| {
        model.eps(z, &model.schedule().levels_at_logsnr(gamma).to_kind(z.kind()), labels.as_ref(), train)
    };
    let logits = noise_logits(eps_hat, &pairs.z, &pairs.zeta, &proposal, draws as usize, rng)?;
    Ok(pairs.score(&logits))
}

/// Per-sample weights of the squared error at levels `t` ([B], integer or fractional):
/// min(1, γ/SNR_t), or 1 for all. Low levels, whose ε is hard to tell but whose x̂0 is almost
/// right anyway, weigh less; the levels where samples take shape keep weight 1.
fn level_weights(schedule: &Schedule, t: &Tensor, min_snr: Option<f64>, like: &Tensor) -> Tensor {
    let Some(gamma) = min_snr else { return t.ones_like().to_kind(like.kind()) };
    let (abar, one_minus) = schedule.alpha_bar_pair(t);
    (one_minus * gamma / abar).clamp_max(1.0).to_kind(like.kind())
}

/// The loss terms of one batch (scalar tensors, with graph).
pub struct Loss {
    /// What is minimised: w_ce·CE + w_mse·MSE for a CDM, the MSE for a DDM.
    pub total: Tensor,
    /// Cross-entropy of the level classifier in nats (CDM only).
    pub ce: Option<Tensor>,
    /// Mean over samples at levels 1..=T of ‖ε̂ - ε‖² (summed over dimensions), unweighted.
    pub mse: Tensor,
    /// The contrastive diffusion loss, when training with it (its weight is in `total`).
    pub cdl: Option<CdlTerm>,
}

/// Levels spread evenly over `first..first + count` with one random offset:
/// t_i = first + ⌊(i + u)·count/B⌋. Each t_i has the uniform marginal once the batch order is
/// ignored, which it can be (the x0 and ε are i.i.d.), and the batch covers every level in
/// proportion, which cuts the variance of the per-level terms.
fn stratified_levels(batch: usize, first: usize, count: usize, rng: &mut Rng) -> Tensor {
    let u = rng.unit();
    let t: Vec<i64> = (0..batch).map(|i| (((i as f64 + u) / batch as f64) * count as f64) as i64).collect();
    Tensor::from_slice(&t).clamp(0, count as i64 - 1) + first as i64
}

/// Levels 0..π.len() drawn from the prior `prior` the same stratified way: the inverse CDF of
/// π at (i + u)/B.
fn stratified_levels_from(batch: usize, prior: &[f64], rng: &mut Rng) -> Tensor {
    let u = rng.unit();
    let cdf: Vec<f64> = prior.iter().scan(0.0, |acc, p| Some(*acc + p).inspect(|c| *acc = *c)).collect();
    let total = cdf.last().copied().unwrap_or(1.0);
    let t: Vec<i64> = (0..batch)
        .map(|i| {
            let v = (i as f64 + u) / batch as f64 * total;
            cdf.partition_point(|&c| c <= v).min(prior.len() - 1) as i64
        })
        .collect();
    Tensor::from_slice(&t)
}

/// Each sample's level stride for the subsets of levels its cross-entropy runs over, [n, 1]
/// Int64, or `None` when every level competes: sample i, at level t_i with stride k_i (the
/// strides taken in turn from a random start), competes only with the levels s ≡ t_i (mod k_i).
/// The softmax over any subset of levels has the same Bayes logits log p_s(x) + c(x), so the
/// model stays exact; what changes is how log p_0 − log p_{T+1} gets pinned. With every level in
/// every softmax, only adjacent levels compete, and the T + 1 learned ratios between them add
/// their errors (at T = 200 a 2-D mixture is off by 0.09 nats, at T = 10 by 0.03:
/// docs/results.md §1); a stride k makes a chain of (T + 2)/k ratios, each pinned by a contest
/// between levels far enough apart to be told apart.
fn level_strides(classes: usize, strides: &[usize], shard: Shard, rng: &mut Rng) -> Result<Option<Tensor>> {
    if let Some(&bad) = strides.iter().find(|&&k| k == 0 || k >= classes) {
        return Err(Error::Config(format!("level stride {bad} is outside 1..={}", classes - 1)));
    }
    if strides.iter().all(|&k| k == 1) {
        return Ok(None);
    }
    let start = (rng.unit() * strides.len() as f64) as usize;
    let k: Vec<i64> = shard.range().map(|i| strides[(i + start) % strides.len()] as i64).collect();
    Ok(Some(Tensor::from_slice(&k).unsqueeze(1)))
}

/// Mean over samples of ‖a - b‖², summed over dimensions: [B, ..] → [B].
fn squared_error(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).square().flatten(1, -1).sum_dim_intlist(1, false, a.kind())
}

/// The random part of one batch's loss for the rows of a shard: the levels, the noise and what
/// follows from them alone, drawn on the host from the step's stream and uploaded together.
/// [`cdm_loss`] and [`ddm_loss`] draw it and hand it to [`cdm_loss_given`] or
/// [`ddm_loss_given`], which compute on the device alone: a training step recorded as a CUDA
/// graph takes each step's draw as its inputs ([`crate::train::graphed`]).
pub struct LossDraw {
    /// Rows in the whole batch (all shards).
    pub batch: usize,
    /// The levels [n]: Int64, or fractional in the data's kind (a DDM's continuous levels).
    pub t: Tensor,
    /// ε [n, ..], in the data's kind.
    pub eps: Tensor,
    /// Each sample's squared-error weight [n], in the data's kind: a CDM's importance
    /// 1/(π_t·(T+2)), zero at t = 0 and T+1; a DDM's 1/q(γ) over the support's length on
    /// continuous levels, 1 on integer ones.
    pub weights: Tensor,
    /// What the weighted errors of the whole batch are divided by: [], in the data's kind.
    pub normaliser: Tensor,
    /// A CDM's log π over its levels, added to the logits: f64 [1, T+2] (none: uniform levels).
    pub log_prior: Option<Tensor>,
    /// A CDM's level stride per sample, [n, 1] Int64 (see [`level_strides`]).
    pub strides: Option<Tensor>,
}

impl LossDraw {
    /// Draws t ~ U{0..T+1} (stratified, or from the prior `weights.low_levels` sets) and
    /// ε ~ N(0, I) for `shard`'s rows `x0` of a batch, for a CDM.
    pub fn cdm(model: &Classifier, x0: &Tensor, weights: &LossWeights, shard: Shard, rng: &mut Rng) -> Result<Self> {
        let batch = check_shard(x0, shard)?;
        let classes = model.schedule().num_classes();
        if !(0.0..=1.0).contains(&weights.low_levels) {
            return Err(Error::Config(format!("low_levels is {}; expected a share in [0, 1]", weights.low_levels)));
        }
        // Under a prior π the Bayes classifier's logits are log π_t + log p_t(x) + c(x): adding
        // log π to the logits in the cross-entropy (logit adjustment) leaves the network's own
        // logits the prior-free log p_t + c that the likelihood and ε̂ read. The squared error is
        // weighted by 1/π_t (normalised), so its average over levels stays uniform.
        let prior_values = (weights.low_levels > 0.0).then(|| level_prior(classes, weights.low_levels));
        let all_levels = match &prior_values {
            Some(p) => stratified_levels_from(batch, p, rng),
            None => stratified_levels(batch, 0, classes, rng),
        };
        let prior = prior_values.as_deref().map(Tensor::from_slice);
        let eps = rng.normal_rows(&whole_shape(x0, batch), shard.range(), x0.kind());
        // The importance 1/(π_t·(T+2)) at the levels that have a squared error (0 < t < T+1).
        let error_weights = |t: &Tensor| {
            let importance = match &prior {
                Some(p) => (p.index_select(0, t) * classes as f64).reciprocal(),
                None => t.ones_like().to_kind(Kind::Double),
            };
            t.gt(0).logical_and(&t.lt(classes as i64 - 1)).to_kind(Kind::Double) * importance
        };
        // The whole batch's total normalises every shard's sum.
        let count = error_weights(&all_levels).sum(Kind::Double).double_value(&[]).max(1e-12);
        let t = shard.rows(&all_levels);
        let draw = LossDraw {
            batch,
            weights: error_weights(&t).to_kind(x0.kind()),
            t,
            eps,
            normaliser: Tensor::from(count).to_kind(x0.kind()),
            log_prior: prior.map(|p| p.log().unsqueeze(0)),
            strides: level_strides(classes, &weights.level_strides, shard, rng)?,
        };
        Ok(draw.to_device(x0.device()))
    }

    /// Draws a level per sample (integer levels: t ~ U{1..T}, stratified; continuous ones: γ
    /// from the model's truncated logistic, stratified) and ε ~ N(0, I) for `shard`'s rows `x0`
    /// of a batch, for a DDM.
    pub fn ddm(model: &Denoiser, x0: &Tensor, weights: &LossWeights, shard: Shard, rng: &mut Rng) -> Result<Self> {
        if weights.low_levels != 0.0 {
            return Err(Error::Config("low_levels weighs a CDM's cross-entropy; a DDM has none".into()));
        }
        let batch = check_shard(x0, shard)?;
        let schedule = model.schedule();
        let kind = x0.kind();
        let (t, error_weights) = match schedule.levels() {
            Levels::Discrete => {
                let t = shard.rows(&stratified_levels(batch, 1, schedule.timesteps(), rng));
                let ones = t.ones_like().to_kind(kind);
                (t, ones)
            }
            Levels::Continuous(proposal) => {
                let (gamma, weight) = proposal.draw(batch, batch, rng, Device::Cpu);
                let t = schedule.levels_at_logsnr(&shard.rows(&gamma)).to_kind(kind);
                (t, (shard.rows(&weight) / (2.0 * LOGSNR_CLIP * proposal.scale)).to_kind(kind))
            }
        };
        let eps = rng.normal_rows(&whole_shape(x0, batch), shard.range(), kind);
        let normaliser = Tensor::from(batch as f64).to_kind(kind);
        let draw = LossDraw { batch, t, eps, weights: error_weights, normaliser, log_prior: None, strides: None };
        Ok(draw.to_device(x0.device()))
    }

    /// Every tensor on `device` (see [`crate::device::upload`]).
    pub fn to_device(&self, device: Device) -> Self {
        self.map(|t| upload(t, device))
    }

    /// The draw with `f` applied to each tensor.
    pub fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        LossDraw {
            batch: self.batch,
            t: f(&self.t),
            eps: f(&self.eps),
            weights: f(&self.weights),
            normaliser: f(&self.normaliser),
            log_prior: self.log_prior.as_ref().map(&f),
            strides: self.strides.as_ref().map(&f),
        }
    }

    /// Copies `other`'s values into this draw's tensors, which must match it in shape.
    pub fn copy_from(&self, other: &LossDraw) -> Result<()> {
        let pairs = [
            (Some(&self.t), Some(&other.t)),
            (Some(&self.eps), Some(&other.eps)),
            (Some(&self.weights), Some(&other.weights)),
            (Some(&self.normaliser), Some(&other.normaliser)),
            (self.log_prior.as_ref(), other.log_prior.as_ref()),
            (self.strides.as_ref(), other.strides.as_ref()),
        ];
        for pair in pairs {
            match pair {
                (Some(into), Some(from)) => into.shallow_clone().f_copy_(from)?,
                (None, None) => {}
                _ => return Err(Error::Shape("two loss draws of different kinds".into())),
            }
        }
        Ok(())
    }
}

/// Draws t ~ U{0..T+1} (stratified) and ε ~ N(0, I) for each sample of a batch and returns
/// the CDM loss of `shard`'s part of it, `x0` ([shard.len, ..]): the share of the whole batch's
/// loss those samples carry, so that the shards' losses (and gradients) add up to the batch's.
/// The squared error is summed over dimensions, so that it grows with D
/// as the CE's signal does (log-density ratios are extensive) and one CE weight ≈ 1 suits
/// 2-D points and images alike; the official code averages over dimensions with w_ce = 1e-3 at
/// D = 3072, which is a CE weight ≈ 3 here. The MSE skips t = 0 (ε̂ = 0: a constant) and
/// t = T+1 (ε̂ = x_t = ε exactly): neither has a gradient, and counting them would only dilute
/// the average.
pub fn cdm_loss(
    model: &Classifier,
    x0: &Tensor,
    labels: Option<&Tensor>,
    weights: &LossWeights,
    shard: Shard,
    rng: &mut Rng,
) -> Result<Loss> {
    let draw = LossDraw::cdm(model, x0, weights, shard, rng)?;
    cdm_loss_given(model, x0, labels, &draw, weights)
}

/// [`cdm_loss`] with its levels and noise drawn: device operations alone (no host read), so
/// that a CUDA graph can hold them.
pub fn cdm_loss_given(
    model: &Classifier,
    x0: &Tensor,
    labels: Option<&Tensor>,
    draw: &LossDraw,
    weights: &LossWeights,
) -> Result<Loss> {
    let classes = model.schedule().num_classes();
    let t = &draw.t;
    let x_t = model.schedule().add_noise(x0, &draw.eps, t);
    check_labels(labels, x0.size()[0], model.num_labels())?;
    let out = model.forward_unchecked(&x_t, t, labels, true)?;
    let logits = match &draw.log_prior {
        Some(log_prior) => out.logits.to_kind(Kind::Double) + log_prior,
        None => out.logits.to_kind(Kind::Double),
    };
    let logits = match &draw.strides {
        Some(k) => {
            let levels = Tensor::arange(classes as i64, (Kind::Int64, t.device())).unsqueeze(0);
            logits.masked_fill(&(levels - t.unsqueeze(1)).remainder_tensor(k).ne(0), f64::NEG_INFINITY)
        }
        None => logits,
    };
    let log_p = logits.log_softmax(1, Kind::Double).gather(1, &t.unsqueeze(1), false);
    let ce = (log_p.sum(Kind::Double) / -(draw.batch as f64)).to_kind(x0.kind());
    let error = squared_error(&out.eps, &draw.eps) * &draw.weights;
    let mse = error.sum(x0.kind()) / &draw.normaliser;
    let weighted = (error * level_weights(model.schedule(), t, weights.min_snr, x0)).sum(x0.kind()) / &draw.normaliser;
    Ok(Loss { total: &ce * weights.ce + weighted * weights.mse, ce: Some(ce), mse, cdl: None })
}

/// The size of the batch `shard` is part of, checking that `x0` holds its rows.
fn check_shard(x0: &Tensor, shard: Shard) -> Result<usize> {
    let rows = x0.size()[0];
    if rows != shard.len as i64 || shard.start + shard.len > shard.total {
        return Err(Error::Shape(format!(
            "x0 has {rows} rows; expected the {} of examples {:?} of a batch of {}",
            shard.len,
            shard.range(),
            shard.total
        )));
    }
    Ok(shard.total)
}

/// `x0`'s shape with `batch` rows.
fn whole_shape(x0: &Tensor, batch: usize) -> Vec<i64> {
    let mut shape = x0.size();
    shape[0] = batch as i64;
    shape
}

/// Draws a level per sample of a batch and ε ~ N(0, I), and returns the DDM's simple loss of
/// `shard`'s part of it, `x0` ([shard.len, ..]), as its share of the batch's (see
/// [`cdm_loss`]); summed over dimensions like the CDM's MSE term, plus the contrastive diffusion
/// loss with `weights.cdl`, which the shard holding the batch's first samples computes. On
/// continuous levels each error is weighted by 1/q(γ) over the support's length, so the loss is
/// the error averaged uniformly over log SNR (the I-MMSE integrand of Kong et al. 2023,
/// arXiv:2302.03792).
pub fn ddm_loss(
    model: &Denoiser,
    x0: &Tensor,
    labels: Option<&Tensor>,
    weights: &LossWeights,
    shard: Shard,
    rng: &mut Rng,
) -> Result<Loss> {
    let draw = LossDraw::ddm(model, x0, weights, shard, rng)?;
    let loss = ddm_loss_given(model, x0, labels, &draw, weights)?;
    let Some(cdl) = weights.cdl else { return Ok(loss) };
    let term = if shard.start > 0 {
        CdlTerm { loss: Tensor::zeros([], (x0.kind(), x0.device())), accuracy: f64::NAN }
    } else {
        if cdl.images > shard.len {
            return Err(Error::Config(format!(
                "cdl.images is {}, more than the {} samples of a rank's share of the batch",
                cdl.images, shard.len
            )));
        }
        // The default number of draws is the batch's size, not the shard's.
        let draws = if cdl.draws == 0 { draw.batch } else { cdl.draws };
        cdl_loss(model, x0, labels, &CdlConfig { draws, ..cdl }, true, rng)?
    };
    Ok(Loss { total: loss.total + &term.loss * cdl.weight, cdl: Some(term), ..loss })
}

/// [`ddm_loss`] without the contrastive term, its levels and noise drawn: device operations
/// alone (no host read), so that a CUDA graph can hold them.
pub fn ddm_loss_given(
    model: &Denoiser,
    x0: &Tensor,
    labels: Option<&Tensor>,
    draw: &LossDraw,
    weights: &LossWeights,
) -> Result<Loss> {
    let schedule = model.schedule();
    let x_t = schedule.add_noise(x0, &draw.eps, &draw.t);
    check_labels(labels, x0.size()[0], model.num_labels())?;
    let error = squared_error(&model.eps_unchecked(&x_t, &draw.t, labels, true)?, &draw.eps);
    let denoising = (&error * level_weights(schedule, &draw.t, weights.min_snr, x0) * &draw.weights).sum(x0.kind())
        / &draw.normaliser;
    Ok(Loss { total: denoising, ce: None, mse: error.sum(x0.kind()) / &draw.normaliser, cdl: None })
}
