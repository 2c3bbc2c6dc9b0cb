//! A model with a Gaussian base and an untrained network (whose output layer starts at zero) is
//! the exact model of the fitted Gaussian: for data N(μ, diag v), the CDM's input-gradient
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
const VAR: [f64; 3] = [0.25, 1e-3, 2.0];

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
    // Points with exactly the moments MEAN and VAR (plus the base's variance floor).
    let z = Tensor::from_slice(&[-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]).reshape([2, 3]);
    let x = z * Tensor::from_slice(&VAR).sqrt() + Tensor::from_slice(&MEAN);
    model.base().unwrap().fit(&x);
    (vs, model)
}

/// E[ε | x_t] for N(μ, diag v) data: σ_t (x_t − √ᾱ_t μ) / (ᾱ_t v + σ_t²), per dimension.
fn exact_eps(x: &Tensor, abar: f64) -> Tensor {
    let floor = (2.0f64 / 256.0).powi(2) / 12.0;
    let var = Tensor::from_slice(&VAR) + floor;
    (x - Tensor::from_slice(&MEAN) * abar.sqrt()) * (1.0 - abar).sqrt() / (var * abar + (1.0 - abar))
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
    let floor = (2.0f64 / 256.0).powi(2) / 12.0;
    for t in [0usize, 7, 50] {
        let abar = model.schedule().alpha_bar(t);
        let var = (Tensor::from_slice(&VAR) + floor) * abar + (1.0 - abar);
        let centred = &x - Tensor::from_slice(&MEAN) * abar.sqrt();
        let exact = ((centred.square() / &var + (var * (2.0 * std::f64::consts::PI)).log()) * -0.5).sum_dim_intlist(
            1,
            false,
            Kind::Double,
        );
        let got = log_prob(classifier, &x, t, None).unwrap();
        let err = max_abs_diff(&got, &exact);
        assert!(err < 1e-8, "t={t}: log p off by {err}");
    }
}
