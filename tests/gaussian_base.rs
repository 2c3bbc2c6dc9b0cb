//! A model with a Gaussian base and an untrained network (whose output layer starts at zero) is
//! the exact model of the fitted Gaussian: for data N(μ, Σ), the CDM's input-gradient
//! denoiser and the DDM's noise prediction are the exact posterior means at every level, and
//! the CDM's one-pass log-likelihood is the exact Gaussian log-density.
mod common;

use cdm::likelihood::log_prob;
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::schedule::{ScheduleConfig, ScheduleKind};
use common::{det_points, max_abs_diff};
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
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = ModelConfig {
        kind,
        schedule: ScheduleConfig::new(ScheduleKind::Linear, 50),
        backbone: BackboneConfig::Mlp(MlpConfig::default()),
        data_shape: vec![3],
        gaussian_base: true,
    };
    let model = Model::new(&vs.root(), &cfg).unwrap();
    vs.double();
    // Points with exactly the mean μ and covariance Σ: μ ± √3·(columns of A).
    let a = Tensor::from_slice(&A).reshape([3, 3]);
    let columns = a.tr() * 3f64.sqrt();
    let x = Tensor::cat(&[&columns, &(-&columns)], 0) + mean();
    model.base().unwrap().fit(&x);
    (vs, model)
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
