//! A model with a Gaussian base and an untrained network (whose output layer starts at zero) is
//! the exact model of the fitted Gaussian: for data N(μ, Σ), the CDM's input-gradient
//! denoiser and the DDM's noise prediction are the exact posterior means at every level, and
//! the CDM's one-pass log-likelihood is the exact Gaussian log-density.
mod common;

use cdm::likelihood::log_prob;
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::schedule::{ScheduleConfig, ScheduleKind};
use common::{base_model, det_points, max_abs_diff};
use tch::{nn, Kind, Tensor};

const MEAN: [f64; 3] = [0.5, -1.0, 0.0];
/// Σ = A Aᵀ: correlated, with one direction of tiny variance.
const A: [f64; 9] = [0.5, 0.0, 0.0, 0.4, 0.03, 0.0, -0.6, 0.2, 1.2];
/// The variance the base adds to every direction.
const FLOOR: f64 = (2.0 / 256.0) * (2.0 / 256.0) / 12.0;

fn mean() -> Tensor {
    Tensor::from_slice(&MEAN)
}

/// The covariance of x_t for the fitted Gaussian: ᾱ(Σ + floor·I) + (1 − ᾱ)I.
fn level_cov(abar: f64) -> Tensor {
    let a = Tensor::from_slice(&A).reshape([3, 3]);
    let eye = Tensor::eye(3, (Kind::Double, tch::Device::Cpu));
    (a.matmul(&a.tr()) + &eye * FLOOR) * abar + eye * (1.0 - abar)
}

fn model(kind: ModelKind) -> (nn::VarStore, Model) {
    // Points with exactly the mean μ and covariance Σ: μ ± √3·(columns of A).
    let a = Tensor::from_slice(&A).reshape([3, 3]);
    let columns = a.tr() * 3f64.sqrt();
    let x = Tensor::cat(&[&columns, &(-&columns)], 0) + mean();
    base_model(kind, 50, BackboneConfig::Mlp(MlpConfig::default()), &x)
}

/// E[ε | x_t] for N(μ, Σ) data: σ_t (ᾱ_t Σ + σ_t² I)⁻¹ (x_t − √ᾱ_t μ).
fn exact_eps(x: &Tensor, abar: f64) -> Tensor {
    (x - mean() * abar.sqrt()).matmul(&level_cov(abar).inverse()) * (1.0 - abar).sqrt()
}

#[test]
fn an_untrained_model_with_a_base_denoises_gaussian_data_exactly() {
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (_vs, model) = model(kind);
        let x = det_points(6, 3);
        for t in [1usize, 10, 25, 50] {
            let level = Tensor::full([6], t as i64, (Kind::Int64, tch::Device::Cpu));
            let eps = model.eps(&x, &level, None).unwrap();
            let exact = exact_eps(&x, model.schedule().alpha_bar(t));
            let err = max_abs_diff(&eps, &exact);
            assert!(err < 1e-9, "{kind:?} t={t}: ε̂ off by {err}");
        }
    }
}

#[test]
fn the_one_pass_likelihood_of_a_base_is_the_exact_gaussian_density() {
    let (_vs, model) = model(ModelKind::Cdm);
    let classifier = model.classifier().unwrap();
    let x = det_points(6, 3);
    for t in [0usize, 7, 50] {
        let abar = model.schedule().alpha_bar(t);
        let cov = level_cov(abar);
        let centred = &x - mean() * abar.sqrt();
        let mahalanobis = (centred.matmul(&cov.inverse()) * &centred).sum_dim_intlist(1, false, Kind::Double);
        let exact = (mahalanobis + (cov * (2.0 * std::f64::consts::PI)).logdet()) * -0.5;
        let got = log_prob(classifier, &x, t, None).unwrap();
        let err = max_abs_diff(&got, &exact);
        assert!(err < 1e-8, "t={t}: log p off by {err}");
    }
}

/// Class 1 of the per-class tests: another mean and covariance.
const MEAN_1: [f64; 3] = [-1.0, 0.5, 1.5];
const A_1: [f64; 9] = [0.9, 0.0, 0.0, -0.3, 0.6, 0.0, 0.1, 0.2, 0.02];

/// log N(x; √ᾱ·μ, ᾱ(A Aᵀ + floor·I) + (1 − ᾱ)I): [B].
fn gaussian_log_density(x: &Tensor, mean: &[f64], a: &[f64], abar: f64) -> Tensor {
    let a = Tensor::from_slice(a).reshape([3, 3]);
    let eye = Tensor::eye(3, (Kind::Double, tch::Device::Cpu));
    let cov = (a.matmul(&a.tr()) + &eye * FLOOR) * abar + eye * (1.0 - abar);
    let centred = x - Tensor::from_slice(mean) * abar.sqrt();
    let mahalanobis = (centred.matmul(&cov.inverse()) * &centred).sum_dim_intlist(1, false, Kind::Double);
    (mahalanobis + (cov * (2.0 * std::f64::consts::PI)).logdet()) * -0.5
}

/// A conditional model with one Gaussian per class, fitted to two classes of points with
/// exactly the means and covariances above: 6 points of class 0, 12 of class 1 (weights 1/3,
/// 2/3).
fn per_class_model(kind: ModelKind) -> (nn::VarStore, Model) {
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = ModelConfig {
        kind,
        schedule: ScheduleConfig::new(ScheduleKind::Linear, 50),
        backbone: BackboneConfig::Mlp(MlpConfig { num_labels: 2, ..MlpConfig::default() }),
        data_shape: vec![3],
        gaussian_base: true,
        base_per_class: true,
    };
    let model = Model::new(&vs.root(), &cfg).unwrap();
    vs.double();
    let points = |mean: &[f64], a: &[f64]| {
        let columns = Tensor::from_slice(a).reshape([3, 3]).tr() * 3f64.sqrt();
        Tensor::cat(&[&columns, &(-&columns)], 0) + Tensor::from_slice(mean)
    };
    let (class_0, class_1) = (points(&MEAN, &A), points(&MEAN_1, &A_1));
    let x = Tensor::cat(&[&class_1, &class_0, &class_1], 0);
    let labels = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
    model.base().unwrap().fit(&x, Some(&labels)).unwrap();
    (vs, model)
}

/// The exact log-density of level t under label 0, 1 or the null label 2 (the mixture): [B].
fn per_class_log_density(x: &Tensor, label: i64, abar: f64) -> Tensor {
    let class_0 = gaussian_log_density(x, &MEAN, &A, abar);
    let class_1 = gaussian_log_density(x, &MEAN_1, &A_1, abar);
    match label {
        0 => class_0,
        1 => class_1,
        _ => Tensor::stack(&[class_0 + (1.0f64 / 3.0).ln(), class_1 + (2.0f64 / 3.0).ln()], 1).logsumexp([1], false),
    }
}

#[test]
fn a_per_class_base_is_each_class_exactly_and_their_mixture_for_the_null_label() {
    let x = det_points(6, 3);
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (_vs, model) = per_class_model(kind);
        for label in 0..=2i64 {
            let labels = Tensor::full([6], label, (Kind::Int64, tch::Device::Cpu));
            for t in [1usize, 10, 25, 50] {
                let abar = model.schedule().alpha_bar(t);
                // E[ε | x_t] = −σ_t ∇ log p_t(x_t), for the class's Gaussian and for the mixture.
                let xg = x.copy().set_requires_grad(true);
                let grad = Tensor::run_backward(
                    &[per_class_log_density(&xg, label, abar).sum(Kind::Double)],
                    &[&xg],
                    false,
                    false,
                );
                let exact = &grad[0] * -(1.0 - abar).sqrt();
                let level = Tensor::full([6], t as i64, (Kind::Int64, tch::Device::Cpu));
                let eps = model.eps(&x, &level, Some(&labels)).unwrap();
                let err = max_abs_diff(&eps, &exact);
                assert!(err < 1e-8, "{kind:?} label {label} t={t}: ε̂ off by {err}");
                if kind == ModelKind::Cdm {
                    let got = log_prob(model.classifier().unwrap(), &x, t, Some(&labels)).unwrap();
                    let err = max_abs_diff(&got, &per_class_log_density(&x, label, abar));
                    assert!(err < 1e-8, "label {label} t={t}: log p off by {err}");
                }
            }
        }
    }
}

#[test]
fn a_per_class_base_needs_a_conditional_model_and_labels() {
    let cfg = |num_labels| ModelConfig {
        kind: ModelKind::Cdm,
        schedule: ScheduleConfig::new(ScheduleKind::Linear, 10),
        backbone: BackboneConfig::Mlp(MlpConfig { num_labels, ..MlpConfig::default() }),
        data_shape: vec![3],
        gaussian_base: true,
        base_per_class: true,
    };
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let err = Model::new(&vs.root(), &cfg(0)).err().expect("an unconditional model was accepted").to_string();
    assert!(err.contains("needs a conditional model"), "{err}");
    let model = Model::new(&vs.root(), &cfg(2)).unwrap();
    let x = det_points(4, 3);
    let err = model.base().unwrap().fit(&x, None).unwrap_err().to_string();
    assert!(err.contains("needs labelled data"), "{err}");
    let err = model.base().unwrap().fit(&x, Some(&Tensor::from_slice(&[0i64, 0, 0, 0]))).unwrap_err().to_string();
    assert!(err.contains("no points with label 1"), "{err}");
}

#[test]
fn cached_base_terms_follow_a_refit_and_a_load() {
    // The base keeps what it derives from its statistics between forward passes; a refit or
    // a copy into its variables (as a checkpoint load does) must replace it.
    let x = det_points(6, 3);
    let level = Tensor::from_slice(&[0i64, 1, 10, 25, 50, 51]);
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (mut vs, model) = model(kind);
        let outputs = |m: &Model| match m {
            Model::Cdm(c) => c.logits(&x, None, false).unwrap(),
            Model::Ddm(_) => m.eps(&x, &level, None).unwrap(),
        };
        let before = outputs(&model);
        // Fitted anew to other points: the same as a model fitted to them from the start.
        let other = det_points(40, 3) * 0.5 + 0.25;
        model.base().unwrap().fit(&other, None).unwrap();
        let (mut fresh_vs, fresh) = self::model(kind);
        fresh.base().unwrap().fit(&other, None).unwrap();
        let refit = outputs(&model);
        assert!(max_abs_diff(&refit, &before) > 1e-3, "{kind:?}: the refit must change the outputs");
        assert!(max_abs_diff(&refit, &outputs(&fresh)) < 1e-12, "{kind:?}: stale after a refit");
        // Loaded back: the first model's statistics copied in.
        let (first_vs, _) = self::model(kind);
        fresh_vs.copy(&first_vs).unwrap();
        assert!(max_abs_diff(&outputs(&fresh), &before) < 1e-12, "{kind:?}: stale after a load");
        vs.copy(&fresh_vs).unwrap();
        assert!(max_abs_diff(&outputs(&model), &before) < 1e-12, "{kind:?}: stale after a copy");
    }
}
