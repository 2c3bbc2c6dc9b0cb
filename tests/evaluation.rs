//! The evaluation functions of `cdm::eval` against known answers. The model is the exact one of
//! Gaussian data N(0, λI) in two dimensions: a Gaussian base fitted to points with exactly
//! that covariance, and an untrained network (its output layer starts at zero). Its densities
//! are Gaussians at every level, so bits/dim and the denoising error have closed forms, and the
//! level classifier is the Bayes classifier of |x|², whose accuracy and cross-entropy are one
//! dimensional integrals (r = |x|² is λ_t·χ²₂, an exponential law, at level t).
mod common;

use cdm::data::GaussianMixture;
use cdm::eval::classifier::{level_metrics, spread_levels};
use cdm::eval::{
    against_posterior_mean, cdm_noise_classifier, denoising_levels, denoising_mse, exact_noise_classifier,
    level_classifier, level_log_densities, log_likelihood, logit_profile, nll_bits_per_dim, noise_classifier,
    ood_levels, posterior_mean_levels, sampler_drift, samples_mmd, Batches, Estimator, OodScores,
};
use cdm::likelihood::Dequantization;
use cdm::loss::{CdlConfig, ZetaPrior};
use cdm::metrics::fid::cached_stats;
use cdm::metrics::{GaussianStats, Typicality};
use cdm::model::{Model, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::rng::Rng;
use cdm::sample::{ParallelOptions, SampleOptions};
use common::{assert_close, base_model, gaussian_ddim_gain, max_abs_diff};
use tch::{nn, Device, Kind, Tensor};

/// The data's variance before the base's floor.
const S2: f64 = 0.01;
/// The variance the base adds to every direction.
const FLOOR: f64 = (2.0 / 256.0) * (2.0 / 256.0) / 12.0;
/// λ, the variance of the data the model is exact for.
const LAMBDA: f64 = S2 + FLOOR;
const T: usize = 50;

fn model(kind: ModelKind) -> (nn::VarStore, Model) {
    // ±√2·s·e_i: mean 0 and covariance exactly s²I.
    let columns = Tensor::eye(2, (Kind::Double, Device::Cpu)) * (2.0 * S2).sqrt();
    let backbone = BackboneConfig::Mlp(MlpConfig { hidden: 16, blocks: 1, ..MlpConfig::default() });
    base_model(kind, T, backbone, &Tensor::cat(&[&columns, &(-&columns)], 0))
}

fn batches() -> Batches<'static> {
    Batches::new(700, (Kind::Double, Device::Cpu))
}

/// `n` points of N(0, var·I) in two dimensions.
fn gaussian(n: i64, var: f64, seed: u64) -> Tensor {
    Rng::new(seed).normal(&[n, 2], Kind::Double) * var.sqrt()
}

/// log N(x; 0, var·I) per point, in f64.
fn log_normal(x: &Tensor, var: f64) -> Tensor {
    x.square().sum_dim_intlist(1, false, Kind::Double) / (-2.0 * var) - (2.0 * std::f64::consts::PI * var).ln()
}

/// The variance of x_t per dimension, ᾱ_t·λ + 1 − ᾱ_t, at every level 0..=T+1.
fn level_vars(model: &Model) -> Vec<f64> {
    model.schedule().alpha_bars().iter().map(|a| a * LAMBDA + 1.0 - a).collect()
}

/// E[g(r)] for r = |x|², x ~ N(0, var·I₂), so r/(2·var) ~ Exp(1): the midpoint rule on
/// u = r/(2·var) over [0, 40] (what lies beyond weighs e^{-40}).
fn expect(var: f64, g: impl Fn(f64) -> f64) -> f64 {
    let (du, steps) = (1e-3, 40_000);
    (0..steps).map(|i| (i as f64 + 0.5) * du).map(|u| (-u).exp() * g(2.0 * var * u) * du).sum()
}

/// The Bayes posterior log p(k | r) over levels of variances `vars`, with a uniform prior.
fn log_posterior(vars: &[f64], r: f64) -> Vec<f64> {
    let log_joint: Vec<f64> = vars.iter().map(|v| -(2.0 * std::f64::consts::PI * v).ln() - r / (2.0 * v)).collect();
    let top = log_joint.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = top + log_joint.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
    log_joint.iter().map(|l| l - log_sum).collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, k| if v[k] > v[best] { k } else { best })
}

#[test]
fn bits_per_dim_of_the_exact_cdm_is_the_gaussian_density() {
    let (_vs, model) = model(ModelKind::Cdm);
    let x = gaussian(500, LAMBDA, 1);
    let how = Estimator::for_nll(&model, 64);
    assert_eq!(how, Estimator::OnePass(0));
    assert_eq!(how.describe(&model), "one forward pass, log p_0");
    let exact = log_normal(&x, LAMBDA) / (-2.0 * std::f64::consts::LN_2);
    let bpd = nll_bits_per_dim(&model, &x, how, None, &batches(), 0).unwrap();
    assert!(max_abs_diff(&bpd, &exact) < 1e-9, "continuous bits/dim off by {}", max_abs_diff(&bpd, &exact));
    // The 8-bit convention without dequantization adds log2 128 = 7 to the same density.
    let paper = nll_bits_per_dim(&model, &x, how, Some(Dequantization::Paper), &batches(), 0).unwrap();
    assert!(max_abs_diff(&paper, &(exact + 7.0)) < 1e-9);
    // The estimator must fit the model.
    assert!(log_likelihood(&model, &x, Estimator::Immse(4), &batches(), 0).is_err());
    // log p_1 in one pass, whatever the budgets: the density N(0, ᾱ₁λ + 1 − ᾱ₁).
    let [(1, at_one)] = Estimator::of_log_p1(&model, &[4, 8])[..] else { panic!("one estimator for a CDM") };
    let log_p1 = log_likelihood(&model, &x, at_one, &batches(), 0).unwrap();
    assert!(max_abs_diff(&log_p1, &log_normal(&x, level_vars(&model)[1])) < 1e-9);
}

#[test]
fn the_ddm_immse_estimate_is_unbiased_for_log_p1() {
    let (_vs, model) = model(ModelKind::Ddm);
    let how = Estimator::for_nll(&model, 32);
    assert_eq!(how, Estimator::Immse(32));
    assert_eq!(Estimator::of_log_p1(&model, &[1, 32]), [(1, Estimator::Immse(1)), (32, Estimator::Immse(32))]);
    assert_eq!(how.describe(&model), "I-MMSE, 32 evaluations, log p_1 (density at level 1)");
    let x = gaussian(1000, LAMBDA, 2);
    let estimate = log_likelihood(&model, &x, how, &batches(), 7).unwrap();
    // A discrete-time DDM estimates the density at level 1: N(0, ᾱ₁λ + 1 − ᾱ₁).
    let error = estimate - log_normal(&x, level_vars(&model)[1]);
    let (bias, spread) = (error.mean(Kind::Double).double_value(&[]), error.std(true).double_value(&[]));
    // Monte-Carlo noise only: the mean error within 4 standard errors of zero.
    assert_close(bias, 0.0, 4.0 * spread / 1000f64.sqrt() + 1e-6, "mean error of the I-MMSE log p_1");
    assert!(log_likelihood(&model, &x, Estimator::OnePass(0), &batches(), 0).is_err());
}

#[test]
fn the_exact_denoisers_mse_is_the_closed_form() {
    // Rounded percentages of T: 0.5 rounds up to 1, 2.5 to 3.
    assert_eq!(denoising_levels(50), [1, 3, 5, 10, 15, 25, 35, 45, 50]);
    assert_eq!(denoising_levels(1000), [10, 50, 100, 200, 300, 500, 700, 900, 1000]);
    assert_eq!(denoising_levels(2), [1, 2]);
    let x0 = gaussian(300, LAMBDA, 3);
    let eps = Rng::new(4).normal(&[300, 2], Kind::Double);
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (_vs, model) = model(kind);
        for t in [1, 10, 50] {
            // x̂0 = c·x_t with c = √ᾱλ/(ᾱλ + 1 − ᾱ), so x̂0 − x0 = (c√ᾱ − 1)·x0 + c√(1 − ᾱ)·ε.
            let a = model.schedule().alpha_bar(t);
            let c = a.sqrt() * LAMBDA / (a * LAMBDA + 1.0 - a);
            let error = &x0 * (c * a.sqrt() - 1.0) + &eps * (c * (1.0 - a).sqrt());
            let expected = error.square().mean(Kind::Double).double_value(&[]);
            let mse = denoising_mse(&model, &x0, t, &eps, &batches()).unwrap();
            assert_close(mse, expected, 1e-9 * expected, &format!("{kind:?} MSE at t = {t}"));
        }
        assert!(denoising_mse(&model, &x0, 0, &eps, &batches()).is_err());
        assert!(denoising_mse(&model, &x0, 1, &eps.narrow(0, 0, 10), &batches()).is_err());
    }
}

#[test]
fn the_exact_denoiser_has_no_excess_over_the_posterior_mean() {
    assert_eq!(posterior_mean_levels(1000), [10, 50, 100, 250, 500, 750, 950]);
    assert_eq!(posterior_mean_levels(10), [1, 3, 5, 8, 10]);
    // N(0, λI) as a one-component mixture, whose posterior mean is exact.
    let density = GaussianMixture {
        weights: Tensor::from_slice(&[1.0]),
        means: Tensor::zeros([1, 2], (Kind::Double, Device::Cpu)),
        stds: Tensor::from_slice(&[LAMBDA.sqrt()]),
    };
    let x0 = gaussian(2000, LAMBDA, 5);
    let eps = Rng::new(6).normal(&[2000, 2], Kind::Double);
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (_vs, model) = model(kind);
        let rows = against_posterior_mean(&model, &density, &x0, &eps, &[1, 10, 40], &batches()).unwrap();
        for row in rows {
            // The MMSE of N(0, λI) in two dimensions: 2·λ(1 − ᾱ)/(ᾱλ + 1 − ᾱ), to sampling error.
            let a = row.alpha_bar;
            let mmse = 2.0 * LAMBDA * (1.0 - a) / (a * LAMBDA + 1.0 - a);
            assert_close(row.mmse, mmse, 0.1 * mmse, &format!("{kind:?} MMSE at t = {}", row.level));
            assert!(
                row.excess_percent.abs() < 1e-6,
                "{kind:?} at t = {}: {}% over the MMSE",
                row.level,
                row.excess_percent
            );
        }
        assert!(against_posterior_mean(&model, &density, &x0, &eps, &[0], &batches()).is_err());
    }
}

#[test]
fn level_metrics_count_as_defined() {
    // Three points at levels 0, 1, 2 of 3; logits that pick 0, 2, 2.
    let logits = Tensor::from_slice(&[2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 3.0]).view([3, 3]);
    let m = level_metrics(&logits, &[0, 1, 2]).unwrap();
    assert_close(m.accuracy, 2.0 / 3.0, 1e-12, "accuracy");
    assert_close(m.accuracy_within, 1.0, 1e-12, "within one level");
    assert_close(m.mean_abs_level_error, 1.0 / 3.0, 1e-12, "mean abs. error");
    // −log softmax of the true class, by hand.
    let lse = |l: [f64; 3]| l.iter().map(|v| v.exp()).sum::<f64>().ln();
    let ce = ((lse([2.0, 0.0, 0.0]) - 2.0) + lse([0.0, 0.0, 1.0]) + (lse([0.0, 0.0, 3.0]) - 3.0)) / 3.0;
    assert_close(m.cross_entropy, ce, 1e-12, "cross-entropy");
    assert_eq!(m.confusion, [[1, 0, 0], [0, 0, 1], [0, 0, 1]]);
    assert!(level_metrics(&logits, &[0, 1, 3]).is_err());
    assert!(level_metrics(&logits, &[0, 1]).is_err());
    // Levels spread evenly: 8 points over 4 levels, two each.
    assert_eq!(spread_levels(8, 4, 0.5), [0, 0, 1, 1, 2, 2, 3, 3]);
}

#[test]
fn the_exact_classifier_scores_what_the_bayes_classifier_scores() {
    let (_vs, model) = model(ModelKind::Cdm);
    let classifier = model.classifier().unwrap();
    let vars = level_vars(&model);
    let classes = vars.len();
    // Levels uniform over 0..=T+1, as the points are spread: average over the levels of the
    // expectation of each score under that level's law of r.
    let per_level = |score: &dyn Fn(usize, &[f64]) -> f64| {
        (0..classes).map(|t| expect(vars[t], |r| score(t, &log_posterior(&vars, r)))).sum::<f64>() / classes as f64
    };
    let accuracy = per_level(&|t, post| (argmax(post) == t) as u8 as f64);
    let near = per_level(&|t, post| (argmax(post).abs_diff(t) <= 1) as u8 as f64);
    let mean_abs = per_level(&|t, post| argmax(post).abs_diff(t) as f64);
    let ce = per_level(&|t, post| -post[t]);

    let n = classes * 300;
    let m = level_classifier(classifier, &gaussian(n as i64, LAMBDA, 5), &mut Rng::new(6), &batches()).unwrap();
    assert_eq!(m.n, n);
    assert_eq!((m.within_levels, m.confusion_bins), (1, 50));
    // Monte-Carlo tolerances: about four standard errors of n points (accuracy 0.05 by
    // quadrature, so √(0.05·0.95/n) = 0.0017; |error| and −log p spread about 10 and 0.5).
    assert_close(m.accuracy, accuracy, 0.007, "accuracy");
    assert_close(m.accuracy_within, near, 0.011, "accuracy within one level");
    assert_close(m.mean_abs_level_error, mean_abs, 0.35, "mean abs. level error");
    assert_close(m.cross_entropy, ce, 0.02, "cross-entropy");
    // Far from chance (ln 52 = 3.95 nats), so the check has teeth.
    assert!(ce < (classes as f64).ln() - 0.2, "cross-entropy {ce}");

    // The profile at a true level: the mean log-posterior of every level.
    let t = 25;
    let profile = logit_profile(classifier, &gaussian(4000, LAMBDA, 7), t, &mut Rng::new(8), &batches()).unwrap();
    assert_eq!(profile.len(), classes);
    for k in [0, 10, 25, 40, T + 1] {
        let expected = expect(vars[t], |r| log_posterior(&vars, r)[k]);
        assert_close(profile[k], expected, 0.05 * expected.abs().max(1.0), &format!("profile at level {k}"));
    }
}

#[test]
fn sampler_drift_reads_the_levels_of_exact_ddim_states() {
    let (_vs, model) = model(ModelKind::Cdm);
    let vars = level_vars(&model);
    let opts = SampleOptions::ddim(10);
    let rows = sampler_drift(&model, &gaussian(2000, LAMBDA, 9), &opts, 1500, &mut Rng::new(10), &batches()).unwrap();
    let levels = model.schedule().sampling_levels(10).unwrap();
    assert_eq!(rows.iter().map(|r| r.level).collect::<Vec<_>>(), levels[1..]);
    let mean_argmax = |var: f64| expect(var, |r| argmax(&log_posterior(&vars, r)) as f64);
    for (i, row) in rows.iter().enumerate() {
        // Exact DDIM on Gaussian data is linear: from x_T ~ N(0, I), the state at levels[i+1]
        // is N(0, g²I) with g the product of the step gains.
        let g = gaussian_ddim_gain(|t| model.schedule().alpha_bar(t), &levels[..i + 2], LAMBDA.sqrt());
        // Argmax levels spread over about ±10: four standard errors of 1500 points.
        assert_close(row.sampler_states, mean_argmax(g * g), 1.0, &format!("states at level {}", row.level));
        assert_close(row.real_points, mean_argmax(vars[row.level]), 1.0, &format!("real at level {}", row.level));
    }
}

#[test]
fn the_mmd_of_exact_ddim_samples_is_the_closed_form() {
    // Exact DDIM maps x_T ~ N(0, I) to N(0, g²I); against points of N(0, 4λI) in D = 2 with the
    // kernel exp(−|a − b|²/(2h²)), E k(X, Y) = h²/(h² + a + b) for X ~ N(0, aI), Y ~ N(0, bI), so
    // MMD² = h²/(h² + 2a) + h²/(h² + 2b) − 2h²/(h² + a + b).
    let (_vs, model) = model(ModelKind::Cdm);
    let opts = SampleOptions::ddim(10);
    let levels = model.schedule().sampling_levels(10).unwrap();
    let g = gaussian_ddim_gain(|t| model.schedule().alpha_bar(t), &levels, LAMBDA.sqrt());
    let (a, b, h2) = (g * g, 4.0 * LAMBDA, 0.04);
    let expected = h2 / (h2 + 2.0 * a) + h2 / (h2 + 2.0 * b) - 2.0 * h2 / (h2 + a + b);
    let held_out = gaussian(2000, b, 14);
    let got = samples_mmd(&model, &held_out, &opts, h2.sqrt(), &batches()).unwrap();
    // Kernel values vary by about 0.3: four standard errors of 2000 points each.
    assert_close(got.mmd2, expected, 0.01, "MMD²");
    assert!(expected > 0.2, "a difference the check can see: {expected}");
    assert_eq!(got.cost.steps, 10);
    assert!(got.per_iteration.is_empty());
    // In parallel with every step in one window, the trace scores each iteration's samples:
    // the last iterate is the sample set, and the first, x_T moved once, is not.
    let window = ParallelOptions { window: 10, tol: 1e-6, trace: true, ..Default::default() };
    let parallel = SampleOptions { parallel: Some(window), ..opts };
    let traced = samples_mmd(&model, &held_out, &parallel, h2.sqrt(), &batches()).unwrap();
    // Three batches: as long as the slowest one.
    let len = traced.per_iteration.len();
    assert!(len as f64 >= traced.cost.iterations_per_batch() && len <= traced.cost.iterations, "{len}");
    assert_close(traced.mmd2, got.mmd2, 1e-6, "parallel MMD² against sequential");
    assert_eq!(traced.per_iteration.last(), Some(&traced.mmd2));
    assert!((traced.per_iteration[0] - traced.mmd2).abs() > 0.01, "{:?}", traced.per_iteration);
}

#[test]
fn ood_aurocs_of_two_gaussians_have_closed_forms() {
    let (_vs, model) = model(ModelKind::Cdm);
    let classifier = model.classifier().unwrap();
    let levels = ood_levels(T);
    assert_eq!(levels.len(), 21);
    assert_eq!((levels[1], levels[19], levels[20]), (2, 47, 50));
    // Other data: N(0, μI), four times as spread.
    let mu = 4.0 * LAMBDA;
    let (train, inside, outside) = (gaussian(3000, LAMBDA, 11), gaussian(3000, LAMBDA, 12), gaussian(3000, mu, 13));
    let profile = |x: &Tensor| level_log_densities(classifier, x, &levels, None, &batches()).unwrap();
    // Each column is the exact density at its level, per dimension.
    let vars = level_vars(&model);
    for (j, &t) in levels.iter().enumerate() {
        let exact = log_normal(&inside, vars[t]) / 2.0;
        assert!(max_abs_diff(&profile(&inside).select(1, j as i64), &exact) < 1e-9, "level {t}");
    }
    let typicality = Typicality::fit(&profile(&train)).unwrap();
    let scores = OodScores::of(&typicality, &profile(&inside), &profile(&outside)).unwrap();
    // Every level's density falls with r = |x|², so each ranks points as r does, and
    // P(r_in < r_out) for r = 2·var·Exp(1) is μ/(λ + μ) = 0.8.
    assert_close(scores.likelihood, mu / (LAMBDA + mu), 0.03, "AUROC of the likelihood");
    assert!(scores.by_level.iter().all(|&a| a == scores.likelihood), "{:?}", scores.by_level);
    // Every level's z-score is the same affine function of r, so Σz² and max|z| rank alike:
    // by |r − r̄|, r̄ the training points' mean of r. P(|r_in − r̄| < |r_out − r̄|) by quadrature.
    assert_eq!(scores.typicality_sum_squares, scores.typicality_max_abs);
    let r_bar = train.square().sum(Kind::Double).double_value(&[]) / 3000.0;
    let cdf_in = |r: f64| 1.0 - (-r.max(0.0) / (2.0 * LAMBDA)).exp();
    let expected = expect(mu, |r| {
        let c = (r - r_bar).abs();
        cdf_in(r_bar + c) - cdf_in(r_bar - c)
    });
    assert_close(scores.typicality_sum_squares, expected, 0.03, "AUROC of typicality");
    assert!(OodScores::of(&typicality, &profile(&inside).narrow(1, 0, 3), &profile(&outside)).is_err());
}

#[test]
fn fid_statistics_are_computed_once_then_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats").join("ref-4.safetensors");
    let features = Tensor::from_slice(&[1.0, 2.0, 3.0, 5.0, 0.0, 1.0, 4.0, 4.0]).view([4, 2]);
    let calls = std::cell::Cell::new(0);
    let compute = || {
        calls.set(calls.get() + 1);
        GaussianStats::of(&features)
    };
    let made = cached_stats(&path, compute).unwrap();
    let read = cached_stats(&path, compute).unwrap();
    assert_eq!(calls.get(), 1, "the second call must read the file");
    // Mean (2, 3); covariance by hand with N − 1 = 3: [[10/3, 3], [3, 10/3]].
    let expected_cov = Tensor::from_slice(&[10.0 / 3.0, 3.0, 3.0, 10.0 / 3.0]).view([2, 2]);
    for stats in [&made, &read] {
        assert_eq!(stats.n, 4);
        assert!(max_abs_diff(&stats.mean, &Tensor::from_slice(&[2.0, 3.0])) < 1e-12);
        assert!(max_abs_diff(&stats.cov, &expected_cov) < 1e-12);
    }
    // A corrupt file is made anew.
    std::fs::write(&path, b"not safetensors").unwrap();
    cached_stats(&path, compute).unwrap();
    assert_eq!(calls.get(), 2);
}

#[test]
fn noise_classifiers_of_the_exact_models_are_the_bayes_classifier() {
    // Data N(0, λI) kept or noised at ζ from the models' log-SNR range, the same points for all
    // three: the Bayes classifier from the closed-form densities, the exact CDM's one pass (its
    // level densities, interpolated between levels), and the exact DDM's I-MMSE logits, unbiased
    // but noisy, which a softplus loss can only read as worse.
    let density = GaussianMixture {
        weights: Tensor::from_slice(&[1.0]),
        means: Tensor::zeros([1, 2], (Kind::Double, Device::Cpu)),
        stds: Tensor::from_slice(&[LAMBDA.sqrt()]),
    };
    let x = gaussian(3000, LAMBDA, 21);
    let cdl = CdlConfig { draws: 64, zeta: ZetaPrior::Trained, ..CdlConfig::default() };
    let (_vs, cdm) = model(ModelKind::Cdm);
    let (_vs2, ddm) = model(ModelKind::Ddm);
    let proposal = cdm.schedule().logsnr_proposal();
    assert_eq!(proposal, ddm.schedule().logsnr_proposal());
    let bayes = exact_noise_classifier(&density, &proposal, &x, &cdl, &batches(), 5).unwrap();
    let one_pass = cdm_noise_classifier(cdm.classifier().unwrap(), &x, &cdl, &batches(), 5).unwrap();
    let immse = noise_classifier(&ddm, &x, &cdl, &batches(), 5).unwrap();
    assert!(bayes.loss < 0.5 && bayes.accuracy > 0.7, "a task the check can see: {bayes:?}");
    assert_close(one_pass.loss, bayes.loss, 0.001, "the CDM's loss against Bayes");
    assert_close(one_pass.accuracy, bayes.accuracy, 0.003, "the CDM's accuracy against Bayes");
    assert!(immse.loss > bayes.loss - 0.005 && immse.loss < bayes.loss + 0.05, "DDM {immse:?}, Bayes {bayes:?}");
    assert_close(immse.accuracy, bayes.accuracy, 0.03, "the DDM's accuracy against Bayes");
}
