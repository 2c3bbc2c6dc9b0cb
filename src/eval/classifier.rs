//! The level classifier of a CDM judged as a classifier (Yadin et al. 2024, arXiv:2402.10095,
//! Fig. 6): accuracy, cross-entropy and confusion over noise levels, the mean log-softmax
//! profile at a true level, and where a sampler takes it (the level it reads off a sampler's
//! states against real points noised to the same level).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{mean, Batches};
use crate::classifier::Classifier;
use crate::metrics::confusion_matrix;
use crate::model::Model;
use crate::rng::Rng;
use crate::sample::{draw_from, SampleOptions};
use crate::schedule::levels_like;
use crate::{Error, Result};

/// How well a classifier tells the noise level, on points noised to known levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelMetrics {
    /// Points scored.
    pub n: usize,
    /// Share of points whose most likely level is the true one.
    pub accuracy: f64,
    /// The tolerance of `accuracy_within`, in levels: 1% of the levels, at least 1.
    pub within_levels: i64,
    /// Share of points whose most likely level is within `within_levels` of the true one.
    pub accuracy_within: f64,
    /// Mean |predicted − true| level.
    pub mean_abs_level_error: f64,
    /// Mean −log p(true level | x_t), in nats.
    pub cross_entropy: f64,
    /// Bins of levels the confusion matrix counts over (at most 50).
    pub confusion_bins: usize,
    /// `confusion[true bin][predicted bin]`: point counts.
    pub confusion: Vec<Vec<u64>>,
}

/// `n` levels spread evenly over 0..`classes`, the i-th ⌊(i + u)/n · classes⌋ for an offset
/// `u` in [0, 1): every level gets n/classes points, give or take one.
pub fn spread_levels(n: usize, classes: usize, u: f64) -> Vec<i64> {
    (0..n).map(|i| (((i as f64 + u) / n as f64) * classes as f64) as i64).collect()
}

/// The metrics of `logits` ([N, K], one row a point) against the true levels `truth` ([N], in
/// 0..K).
pub fn level_metrics(logits: &Tensor, truth: &[i64]) -> Result<LevelMetrics> {
    let (n, classes) = match logits.size()[..] {
        [n, k] if n as usize == truth.len() && n > 0 && k > 0 => (n as usize, k as usize),
        _ => return Err(Error::Shape(format!("logits of shape {:?} for {} true levels", logits.size(), truth.len()))),
    };
    if let Some(t) = truth.iter().find(|&&t| t < 0 || t as usize >= classes) {
        return Err(Error::Data(format!("true level {t} is outside 0..{classes}")));
    }
    let logits = logits.to_kind(Kind::Double).to_device(Device::Cpu);
    let truth_t = Tensor::from_slice(truth);
    let cross_entropy = -mean(&logits.log_softmax(1, Kind::Double).gather(1, &truth_t.unsqueeze(1), false));
    let predicted = Vec::<i64>::try_from(logits.argmax(1, false))?;
    let within_levels = (classes / 100).max(1) as i64;
    let share = |f: &dyn Fn(i64, i64) -> bool| {
        truth.iter().zip(&predicted).filter(|(&t, &p)| f(t, p)).count() as f64 / n as f64
    };
    let confusion_bins = classes.min(50);
    let bin = |t: i64| (t as usize * confusion_bins / classes) as i64;
    let confusion = confusion_matrix(
        &truth.iter().map(|&t| bin(t)).collect::<Vec<_>>(),
        &predicted.iter().map(|&p| bin(p)).collect::<Vec<_>>(),
        confusion_bins,
    )?;
    Ok(LevelMetrics {
        n,
        accuracy: share(&|t, p| t == p),
        within_levels,
        accuracy_within: share(&|t, p| (t - p).abs() <= within_levels),
        mean_abs_level_error: truth.iter().zip(&predicted).map(|(t, p)| (t - p).abs() as f64).sum::<f64>() / n as f64,
        cross_entropy,
        confusion_bins,
        confusion,
    })
}

/// Logits [N, T+2] (CPU Double) of `classifier` for points `x` ([N, ..]) already at their levels.
pub fn logits(classifier: &Classifier, x: &Tensor, batches: &Batches) -> Result<Tensor> {
    Ok(batches.map(x, |chunk, _| tch::no_grad(|| classifier.logits(chunk, None, false)))?.to_kind(Kind::Double))
}

/// The level classifier's metrics on `x0` ([N, ..]), each point noised to one of levels spread
/// evenly over 0..=T+1 (their order and the noise drawn from `rng`).
pub fn level_classifier(
    classifier: &Classifier,
    x0: &Tensor,
    rng: &mut Rng,
    batches: &Batches,
) -> Result<LevelMetrics> {
    let schedule = classifier.schedule();
    let truth = spread_levels(x0.size()[0] as usize, schedule.num_classes(), rng.unit());
    let eps = rng.normal(&x0.size(), Kind::Double);
    let x_t = schedule.add_noise(&x0.to_kind(Kind::Double), &eps, &Tensor::from_slice(&truth));
    level_metrics(&logits(classifier, &x_t, batches)?, &truth)
}

/// The mean log-softmax over all levels ([T+2] values, log p(k | x_t) averaged) of points
/// `x0` ([N, ..]) noised to level `t` with noise from `rng`.
pub fn logit_profile(
    classifier: &Classifier,
    x0: &Tensor,
    t: usize,
    rng: &mut Rng,
    batches: &Batches,
) -> Result<Vec<f64>> {
    let schedule = classifier.schedule();
    schedule.check_level(t)?;
    let x0 = x0.to_kind(Kind::Double);
    let x_t = schedule.add_noise(&x0, &rng.normal(&x0.size(), Kind::Double), &levels_like(t, &x0));
    let profile = logits(classifier, &x_t, batches)?.log_softmax(1, Kind::Double).mean_dim(0, false, Kind::Double);
    Ok(Vec::<f64>::try_from(profile)?)
}

/// One step of a sampling run, as the classifier reads it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftRow {
    /// The level the sampler says its state is at.
    pub level: usize,
    /// The mean argmax level of the classifier on the sampler's states.
    pub sampler_states: f64,
    /// The mean argmax level of the classifier on real points noised to `level`.
    pub real_points: f64,
}

/// Where a sampler takes a CDM's classifier: `samples` samples are drawn as `opts` says, and at
/// every step the level the classifier reads off the states (the mean of its argmax) is set
/// against the level the sampler says they are at, and against as many of the real points
/// `x0` noised to that level (noise from `rng`). A time-free classifier's input gradient is
/// trained only on states like the real ones, so a gap between the two shows the sampler
/// leaving what the model knows.
pub fn sampler_drift(
    model: &Model,
    x0: &Tensor,
    opts: &SampleOptions,
    samples: usize,
    rng: &mut Rng,
    batches: &Batches,
) -> Result<Vec<DriftRow>> {
    let classifier = model.classifier()?;
    let schedule = model.schedule();
    let levels = schedule.sampling_levels(opts.steps)?;
    let n = samples.min(x0.size()[0] as usize);
    let mut states: Vec<(usize, Tensor)> = Vec::new();
    let at_once = Batches { batch_size: n, ..*batches };
    draw_from(model, n, opts, &at_once, None, &mut |step| {
        states.push((levels[step.i + 1], step.x_t().to_device(Device::Cpu)))
    })?;
    let read_level = |x: &Tensor| -> Result<f64> { Ok(mean(&logits(classifier, x, batches)?.argmax(1, false))) };
    let real = x0.narrow(0, 0, n as i64).to_kind(Kind::Double);
    let mut rows = Vec::new();
    for (level, x) in &states {
        let noised = schedule.add_noise(&real, &rng.normal(&real.size(), Kind::Double), &levels_like(*level, &real));
        rows.push(DriftRow { level: *level, sampler_states: read_level(x)?, real_points: read_level(&noised)? });
    }
    Ok(rows)
}
