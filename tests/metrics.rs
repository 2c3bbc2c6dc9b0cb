//! AUROC, confusion matrix, Fréchet distance and the I-MMSE likelihood estimator against hand
//! computations and closed forms.
mod common;

use cdm::likelihood::{immse_log_prob, log_standard_normal, GaussianReference};
use cdm::metrics::{auroc, confusion_matrix, frechet_distance, GaussianStats, Typicality};
use cdm::rng::Rng;
use cdm::schedule::{LogSnrProposal, Schedule, ScheduleConfig, ScheduleKind};
use common::assert_close;
use tch::{Kind, Tensor};

#[test]
fn auroc_matches_hand_counts() {
    // Perfect separation, perfect inversion, and chance.
    assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]).unwrap(), 1.0);
    assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), 0.0);
    assert_eq!(auroc(&[1.0], &[1.0]).unwrap(), 0.5);
    // Pairs (p, n): (2,1) win, (2,3) loss, (4,1) win, (4,3) win: 3/4.
    assert_eq!(auroc(&[2.0, 4.0], &[1.0, 3.0]).unwrap(), 0.75);
    // Ties count half: pairs (2,2) half, (2,1) win, (3,2) win, (3,1) win: 3.5/4.
    assert_eq!(auroc(&[2.0, 3.0], &[2.0, 1.0]).unwrap(), 0.875);
    // Brute force over all pairs on scores with many ties.
    let pos: Vec<f64> = (0..37).map(|i| ((i * 7) % 11) as f64).collect();
    let neg: Vec<f64> = (0..29).map(|i| ((i * 5) % 9) as f64).collect();
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    assert_close(auroc(&pos, &neg).unwrap(), wins / (pos.len() * neg.len()) as f64, 1e-12, "auroc");
    assert!(auroc(&[], &[1.0]).is_err());
    assert!(auroc(&[f64::NAN], &[1.0]).is_err());
}

#[test]
fn auroc_of_gaussian_scores_is_the_closed_form() {
    // Scores N(μ₊, σ₊²) against N(μ₋, σ₋²): P(s₊ > s₋) = Φ((μ₊ − μ₋)/√(σ₊² + σ₋²)) = Φ(0.2236).
    let (mean_pos, sd_pos, mean_neg, sd_neg) = (0.5, 1.0, 0.0, 2.0);
    let mut rng = Rng::new(3);
    let pos = Vec::<f64>::try_from(rng.normal(&[20_000], Kind::Double) * sd_pos + mean_pos).unwrap();
    let neg = Vec::<f64>::try_from(rng.normal(&[20_000], Kind::Double) * sd_neg + mean_neg).unwrap();
    let z = (mean_pos - mean_neg) / (sd_pos * sd_pos + sd_neg * sd_neg).sqrt();
    let phi = 0.5 * (1.0 + Tensor::from(z / std::f64::consts::SQRT_2).erf().double_value(&[]));
    // The standard error is below √((1/n₊ + 1/n₋)/12) = 0.003: four of them.
    assert_close(auroc(&pos, &neg).unwrap(), phi, 0.012, "AUROC of Gaussian scores");
    assert!((phi - 0.5885).abs() < 1e-4, "Φ(0.2236) = {phi}");
}

#[test]
fn confusion_matrix_counts_truth_by_prediction() {
    let counts = confusion_matrix(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], 3).unwrap();
    assert_eq!(counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
    assert!(confusion_matrix(&[0, 3], &[0, 0], 3).is_err());
    assert!(confusion_matrix(&[0], &[0, 1], 3).is_err());
}

#[test]
fn frechet_distance_of_gaussians_is_the_closed_form() {
    // Commuting covariances: ‖μ₁ − μ₂‖² + Σ (s₁ − s₂)² over the eigenvalues s² of each.
    let diag = |v: &[f64]| Tensor::from_slice(v).diag(0);
    let rotation = {
        let (c, s) = (0.6f64, 0.8f64);
        Tensor::from_slice(&[c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0]).reshape([3, 3])
    };
    let rotate = |m: Tensor| rotation.matmul(&m).matmul(&rotation.tr());
    let a = GaussianStats { mean: Tensor::from_slice(&[1.0, 0.0, 2.0]), cov: rotate(diag(&[4.0, 1.0, 0.25])), n: 10 };
    let b = GaussianStats { mean: Tensor::from_slice(&[0.0, 0.5, 2.0]), cov: rotate(diag(&[1.0, 9.0, 0.25])), n: 10 };
    let expected = 1.0 + 0.25 + (2.0f64 - 1.0).powi(2) + (1.0f64 - 3.0).powi(2);
    assert_close(frechet_distance(&a, &b).unwrap(), expected, 1e-9, "Fréchet distance");
    assert_close(frechet_distance(&a, &a).unwrap(), 0.0, 1e-9, "distance to itself");
    // Statistics of features: the sample mean and the unbiased covariance.
    let features = Tensor::from_slice(&[1.0, 2.0, 3.0, 6.0]).reshape([2, 2]);
    let stats = GaussianStats::of(&features).unwrap();
    assert_eq!(Vec::<f64>::try_from(&stats.mean).unwrap(), vec![2.0, 4.0]);
    assert_eq!(Vec::<f64>::try_from(stats.cov.flatten(0, -1)).unwrap(), vec![2.0, 4.0, 4.0, 8.0]);
}

#[test]
fn immse_recovers_the_log_density_of_gaussian_data() {
    // Data N(0, s² I): the exact noise predictor at log SNR γ is ε̂(z) = √σ(−γ)·z / (σ(γ)s² + σ(−γ)).
    let (s, d) = (0.5, 4);
    let eps_hat = |z: &Tensor, gamma: &Tensor| {
        let (signal, noise) = (gamma.sigmoid().unsqueeze(1), (-gamma).sigmoid().unsqueeze(1));
        Ok(z * noise.sqrt() / (signal * s * s + noise))
    };
    let x = common::det_points(6, d) * s;
    let exact = log_standard_normal(&(&x / s)) - (d as f64) * f64::ln(s);
    // The integrand decays like e^{−|γ|} on both sides, so ±12 leaves ~1e-5 out.
    let (reference, range) = (GaussianReference::standard(d), LogSnrProposal::covering(-12.0, 12.0).unwrap());
    let estimate = immse_log_prob(eps_hat, &x, &reference, &range, 64000, &mut Rng::new(3)).unwrap();
    let error = (&estimate - &exact).abs().max().double_value(&[]);
    // One ε per evaluation: with 64 000 of them the Monte Carlo error is about 0.02 here (0.1 at
    // 4 000: it falls as 1/√K, with no sign of bias).
    assert!(error < 0.06, "I-MMSE log p off by {error}: {estimate} vs {exact}");
    // A poor predictor (ε̂ = 0) must score the data lower than the truth on average: the
    // estimator is an upper bound on −log p in expectation.
    let zero = |z: &Tensor, _: &Tensor| Ok(z.zeros_like());
    let worse = immse_log_prob(zero, &x, &reference, &range, 4000, &mut Rng::new(3)).unwrap();
    assert!(worse.mean(Kind::Double).double_value(&[]) < exact.mean(Kind::Double).double_value(&[]) - 1.0);
}

#[test]
fn level_at_logsnr_inverts_the_schedule() {
    let schedule = Schedule::new(ScheduleConfig::new(ScheduleKind::Linear, 1000)).unwrap();
    for t in [1, 2, 10, 500, 999, 1000] {
        assert_close(schedule.level_at_logsnr(schedule.logsnr(t)), t as f64, 1e-9, "integer level");
    }
    let mid = (schedule.logsnr(300) + schedule.logsnr(301)) / 2.0;
    assert_close(schedule.level_at_logsnr(mid), 300.5, 1e-9, "halfway in γ");
    assert_eq!(schedule.level_at_logsnr(100.0), 1.0);
    assert_eq!(schedule.level_at_logsnr(-100.0), 1000.0);
}

#[test]
fn typicality_scores_are_hand_computed_z_scores() {
    // Per-level means (1, −2) and unbiased variances (16/3, 4/3).
    let features = Tensor::from_slice(&[3.0, -1.0, -1.0, -3.0, 3.0, -3.0, -1.0, -1.0]).reshape([4, 2]);
    let typicality = Typicality::fit(&features).unwrap();
    let probe = Tensor::from_slice(&[1.0, -2.0, 5.0, -2.0, 1.0, 0.0, 5.0, 0.0]).reshape([4, 2]);
    let (za, zb) = (4.0 / (16.0f64 / 3.0).sqrt(), 2.0 / (4.0f64 / 3.0).sqrt());
    let sums = Vec::<f64>::try_from(typicality.sum_of_squares(&probe)).unwrap();
    let maxes = Vec::<f64>::try_from(typicality.max_abs(&probe)).unwrap();
    for (got, expected) in sums.iter().zip([0.0, -za * za, -zb * zb, -za * za - zb * zb]) {
        assert_close(*got, expected, 1e-9, "sum of squared z");
    }
    for (got, expected) in maxes.iter().zip([0.0, -za, -zb, -za.max(zb)]) {
        assert_close(*got, expected, 1e-9, "max |z|");
    }
}

#[test]
fn immse_through_the_noised_predictor_gives_the_density_at_a_noise_level() {
    // p_α of N(0, s² I) data is N(0, (σ(α)s² + σ(−α)) I); the predictor of the clean data is
    // only asked for log SNR below α.
    let (s, d, alpha) = (0.5f64, 4, 2.0f64);
    let eps_hat = |z: &Tensor, gamma: &Tensor| {
        assert!(gamma.max().double_value(&[]) < alpha, "asked above α");
        let (signal, noise) = (gamma.sigmoid().unsqueeze(1), (-gamma).sigmoid().unsqueeze(1));
        Ok(z * noise.sqrt() / (signal * s * s + noise))
    };
    let sig = |g: f64| 1.0 / (1.0 + (-g).exp());
    let std = (sig(alpha) * s * s + sig(-alpha)).sqrt();
    let x = common::det_points(6, d) * std;
    let exact = log_standard_normal(&(&x / std)) - (d as f64) * std.ln();
    let noised = cdm::likelihood::noised_predictor(eps_hat, Tensor::from(alpha));
    let range = LogSnrProposal::covering(-12.0, alpha + 12.0).unwrap();
    let estimate =
        immse_log_prob(noised, &x, &GaussianReference::standard(d), &range, 64000, &mut Rng::new(5)).unwrap();
    let error = (&estimate - &exact).abs().max().double_value(&[]);
    assert!(error < 0.06, "I-MMSE log p_α off by {error}: {estimate} vs {exact}");
}
