//! The formulas of Theorems 3.1 and 3.2 checked without training: a classifier that outputs the
//! optimal logits for Gaussian data N(0, s² I) must give, through the library's own code paths,
//! the exact posterior-mean denoiser and the exact log-density at every level.
mod common;

use cdm::classifier::Classifier;
use cdm::likelihood::log_prob;
use cdm::predictor::{Conditioned, NoisePredictor};
use cdm::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use clap::ValueEnum;
use common::{det_points, gaussian_backbone, max_abs_diff};
use tch::{Kind, Tensor};

const S: f64 = 0.5;
const D: i64 = 3;

fn gaussian_classifier(kind: ScheduleKind) -> Classifier {
    let schedule = Schedule::new(ScheduleConfig::new(kind, 50)).unwrap();
    let backbone = gaussian_backbone(schedule.alpha_bars(), S, D);
    Classifier::from_backbone(Box::new(backbone), schedule, vec![D])
}

#[test]
fn denoiser_is_the_exact_posterior_mean_at_every_level() {
    for &kind in ScheduleKind::value_variants() {
        let model = gaussian_classifier(kind);
        let x = det_points(7, D);
        let denoiser = Conditioned { model: &model, labels: None };
        for t in 0..=51usize {
            let level = Tensor::full([7], t as i64, (Kind::Int64, tch::Device::Cpu));
            let eps = tch::no_grad(|| denoiser.eps(&x, &level)).unwrap();
            let abar = model.schedule().alpha_bar(t);
            let var = abar * S * S + 1.0 - abar;
            // E[ε | x_t] = √(1-ᾱ) x_t / v_t for Gaussian data.
            let exact = &x * ((1.0 - abar).sqrt() / var);
            assert!(max_abs_diff(&eps, &exact) < 1e-12, "{kind:?} t={t}: eps off by {}", max_abs_diff(&eps, &exact));
            if t <= 50 && abar > 1e-6 {
                // Tweedie: E[x0 | x_t] = √ᾱ s² x_t / v_t.
                let x0 = model.schedule().x0_from_eps(&x, &eps, &level);
                let exact_x0 = &x * (abar.sqrt() * S * S / var);
                assert!(
                    max_abs_diff(&x0, &exact_x0) < 1e-9,
                    "{kind:?} t={t}: x0 off by {}",
                    max_abs_diff(&x0, &exact_x0)
                );
            }
        }
    }
}

#[test]
fn log_prob_is_the_exact_gaussian_log_density_at_every_level() {
    let model = gaussian_classifier(ScheduleKind::Linear);
    let x = det_points(5, D);
    let sq = x.square().sum_dim_intlist(1, false, Kind::Double);
    for t in [0usize, 1, 7, 25, 50, 51] {
        let abar = model.schedule().alpha_bar(t);
        let var = abar * S * S + 1.0 - abar;
        let exact = &sq / (-2.0 * var) - 0.5 * D as f64 * (2.0 * std::f64::consts::PI * var).ln();
        let got = log_prob(&model, &x, t, None).unwrap();
        assert!(max_abs_diff(&got, &exact) < 1e-10, "t={t}: off by {}", max_abs_diff(&got, &exact));
    }
}

#[test]
fn bad_level_and_shape_are_errors() {
    let model = gaussian_classifier(ScheduleKind::Linear);
    assert!(log_prob(&model, &det_points(2, D), 52, None).is_err());
    let err = log_prob(&model, &det_points(2, D + 1), 0, None).unwrap_err().to_string();
    assert!(err.contains("expects [B, 3]"), "{err}");
}
