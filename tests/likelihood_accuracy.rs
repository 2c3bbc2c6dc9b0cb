//! What the likelihood's accuracy rests on (docs/results.md §1). A CDM's cross-entropy under a non-uniform level prior (logit adjustment) and over level
//! subsets (strides) must keep the same Bayes logits, so the one-pass likelihood stays exact.
//! Checked on 1-D Gaussian data, where log p_t(x) is quadratic in x: a classifier whose raw
//! outputs are a·x² + b (one a and b per level) can represent the exact logits, and fitting it
//! by the library's loss must recover log p_0 whatever the prior and the strides. Without the
//! adjustment the fit would be off by log(π_0/π_{T+1}), more than 2 nats here.
use cdm::classifier::Classifier;
use cdm::distributed::Shard;
use cdm::likelihood::log_prob;
use cdm::loss::{cdm_loss, level_prior, LossWeights};
use cdm::nets::fourier_features;
use cdm::rng::Rng;
use cdm::schedule::{Schedule, ScheduleConfig};
use tch::nn::{Adam, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

/// Data standard deviation.
const S: f64 = 0.5;
const T: usize = 10;

fn fitted_log_p0_error(low_levels: f64, level_strides: Vec<usize>) -> f64 {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let classes = T as i64 + 2;
    let a = vs.root().zeros("a", &[classes]);
    let b = vs.root().zeros("b", &[classes]);
    let (a2, b2) = (a.shallow_clone(), b.shallow_clone());
    let backbone = move |x: &Tensor| x.square() * a2.unsqueeze(0) + b2.unsqueeze(0);
    let schedule = Schedule::new(ScheduleConfig { timesteps: T, ..Default::default() }).unwrap();
    let model = Classifier::from_backbone(Box::new(backbone), schedule, vec![1]);
    let mut opt = Adam::default().build(&vs, 0.05).unwrap();
    let mut rng = Rng::new(1);
    let weights = LossWeights { ce: 1.0, mse: 0.0, min_snr: None, cdl: None, low_levels, level_strides };
    let steps = 600;
    for step in 0..steps {
        opt.set_lr(if step < steps / 2 {
            0.05
        } else if step < steps * 4 / 5 {
            0.01
        } else {
            0.002
        });
        let x0 = rng.normal(&[4096, 1], Kind::Float) * S;
        let loss = cdm_loss(&model, &x0, None, &weights, Shard::whole(x0.size()[0] as usize), &mut rng).unwrap();
        opt.backward_step(&loss.total);
    }
    let x = Rng::new(2).normal(&[4096, 1], Kind::Float) * S;
    let learned = log_prob(&model, &x, 0, None).unwrap().to_kind(Kind::Double);
    let exact = x.to_kind(Kind::Double).square().squeeze_dim(1) * (-0.5 / (S * S))
        - 0.5 * (2.0 * std::f64::consts::PI * S * S).ln();
    (learned - exact).abs().mean(Kind::Double).double_value(&[])
}

#[test]
fn the_prior_sums_to_one_and_favours_low_levels() {
    let classes = 1002;
    let uniform = level_prior(classes, 0.0);
    assert!(uniform.iter().all(|&p| (p - 1.0 / classes as f64).abs() < 1e-15));
    let half = level_prior(classes, 0.5);
    assert!((half.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // π(0) = 0.5/1002 + 0.5/H_1002 with the harmonic number H_1002 = 7.4855...
    assert!((half[0] - (0.5 / 1002.0 + 0.5 / 7.487_467_865_541_36)).abs() < 1e-9, "{}", half[0]);
    // The squared error's importance weight 1/(π_t (T+2)) stays below 2.
    assert!(half.iter().all(|&p| 1.0 / (p * classes as f64) < 2.0));
}

#[test]
fn uniform_levels_fit_the_exact_log_density() {
    let error = fitted_log_p0_error(0.0, vec![]);
    assert!(error < 0.03, "max |learned − exact| log p_0 = {error}");
}

#[test]
fn a_low_level_prior_keeps_the_fit_exact() {
    let error = fitted_log_p0_error(0.7, vec![]);
    assert!(error < 0.03, "max |learned − exact| log p_0 = {error}");
}

#[test]
fn level_subsets_keep_the_fit_exact() {
    let error = fitted_log_p0_error(0.5, vec![1, 3, 5]);
    assert!(error < 0.03, "max |learned − exact| log p_0 = {error}");
}

#[test]
fn strides_out_of_range_are_named_errors() {
    let schedule = Schedule::new(ScheduleConfig { timesteps: T, ..Default::default() }).unwrap();
    let backbone = |x: &Tensor| (x * 0.0).expand([x.size()[0], T as i64 + 2], false);
    let model = Classifier::from_backbone(Box::new(backbone), schedule, vec![1]);
    for strides in [vec![0], vec![1, T + 2]] {
        let weights = LossWeights { level_strides: strides, ..LossWeights::default() };
        let x0 = Tensor::zeros([8, 1], (Kind::Float, Device::Cpu));
        let err = cdm_loss(&model, &x0, None, &weights, Shard::whole(x0.size()[0] as usize), &mut Rng::new(0))
            .err()
            .expect("a bad stride is refused");
        assert!(err.to_string().contains("stride"), "{err}");
    }
}

#[test]
fn fourier_features_append_sines_and_cosines_per_channel() {
    let x = Tensor::from_slice(&[0.25f64, -0.5, 1.0 / 6.0, 0.0]).reshape([2, 2]);
    let f = fourier_features(&x, &[0, 2]);
    assert_eq!(f.size(), [2, 10]);
    let at = |row: i64, col: i64| f.double_value(&[row, col]);
    let pi = std::f64::consts::PI;
    // Row 0 is (0.25, −0.5): x, then sin(πx), cos(πx), sin(4πx), cos(4πx), each per channel.
    let expected = [0.25, -0.5, (pi * 0.25).sin(), -1.0, (pi * 0.25).cos(), 0.0, 0.0, 0.0, -1.0, 1.0];
    for (col, want) in expected.iter().enumerate() {
        assert!((at(0, col as i64) - want).abs() < 1e-12, "column {col}: {} against {want}", at(0, col as i64));
    }
    // Row 1, channel 0 is 1/6: sin(4π/6) = √3/2.
    assert!((at(1, 6) - 3f64.sqrt() / 2.0).abs() < 1e-12);
    assert!(fourier_features(&x, &[]).equal(&x));
}
