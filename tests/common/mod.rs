//! Fixtures shared by the integration tests.
#![allow(dead_code)]
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig, UnetConfig};
use cdm::schedule::{ScheduleConfig, ScheduleKind};
use tch::{nn, Kind, Tensor};

/// Asserts |actual - expected| <= tol, printing both.
pub fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!((actual - expected).abs() <= tol, "{what}: got {actual}, expected {expected} (tol {tol})");
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().to_kind(Kind::Double).double_value(&[])
}

/// Deterministic points without any RNG: [n, d] spread over roughly [-2, 2].
pub fn det_points(n: i64, d: i64) -> Tensor {
    let k = Tensor::arange(n * d, (Kind::Double, tch::Device::Cpu));
    ((&k * 0.7).sin() * 2.0).reshape([n, d])
}

/// Optimal raw outputs h of a classifier for data N(0, s² I) in `d` dimensions: the logits are
/// l_t(x) = log N(x; 0, v_t I) with v_t = ᾱ_t s² + 1 - ᾱ_t, and h holds their differences.
pub fn gaussian_backbone(alpha_bar: &[f64], s: f64, d: i64) -> impl Fn(&Tensor) -> Tensor + Send {
    let var: Vec<f64> = alpha_bar.iter().map(|a| a * s * s + 1.0 - a).collect();
    let var = Tensor::from_slice(&var);
    move |x: &Tensor| {
        let v = var.to_kind(x.kind());
        let r = x.square().sum_dim_intlist(1, true, x.kind());
        let logits = (&v * (2.0 * std::f64::consts::PI)).log() * (-0.5 * d as f64) - r / (&v * 2.0);
        let n = logits.size()[1];
        Tensor::cat(&[logits.narrow(1, 0, 1), logits.narrow(1, 1, n - 1) - logits.narrow(1, 0, n - 1)], 1)
    }
}

/// An IDX file (the MNIST format) of unsigned bytes with the given dimensions.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

/// `bytes` gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The gain of deterministic DDIM over `levels` for data N(0, s² I): every step is linear,
/// x_s = (√ᾱ_s√ᾱ_t s² + √(1−ᾱ_s)√(1−ᾱ_t))/(ᾱ_t s² + 1 − ᾱ_t) · x_t.
pub fn gaussian_ddim_gain(alpha_bar: impl Fn(usize) -> f64, levels: &[usize], s: f64) -> f64 {
    levels
        .windows(2)
        .map(|w| {
            let (a_t, a_s) = (alpha_bar(w[0]), alpha_bar(w[1]));
            ((a_s * a_t).sqrt() * s * s + ((1.0 - a_s) * (1.0 - a_t)).sqrt()) / (a_t * s * s + 1.0 - a_t)
        })
        .product()
}

/// A model of `kind` on the linear schedule with `timesteps` levels, in f64, whose Gaussian
/// base is fitted to `points` ([N, D]) and whose network is untrained (its output layer starts
/// at zero): the exact model of the fitted Gaussian.
pub fn base_model(
    kind: ModelKind,
    timesteps: usize,
    backbone: BackboneConfig,
    points: &Tensor,
) -> (nn::VarStore, Model) {
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = ModelConfig {
        kind,
        schedule: ScheduleConfig::new(ScheduleKind::Linear, timesteps),
        backbone,
        data_shape: points.size()[1..].to_vec(),
        gaussian_base: true,
        base_per_class: false,
    };
    let model = Model::new(&vs.root(), &cfg).unwrap();
    vs.double();
    model.base().unwrap().fit(points, None).unwrap();
    (vs, model)
}

/// The settings of a model of `kind`: an MLP over points of `data_shape`, on the linear schedule
/// with `timesteps` levels, without a Gaussian base.
pub fn mlp_config(kind: ModelKind, timesteps: usize, mlp: MlpConfig, data_shape: &[i64]) -> ModelConfig {
    ModelConfig {
        kind,
        schedule: ScheduleConfig::new(ScheduleKind::Linear, timesteps),
        backbone: BackboneConfig::Mlp(mlp),
        data_shape: data_shape.to_vec(),
        gaussian_base: false,
        base_per_class: false,
    }
}

/// A small untrained model of `kind` on 2-D points with 3 classes (label 3 is the null label),
/// a 16-wide MLP on the linear schedule with `timesteps` levels, in f32.
pub fn conditional_mlp(kind: ModelKind, timesteps: usize) -> (nn::VarStore, Model) {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mlp = MlpConfig { hidden: 16, blocks: 1, num_labels: 3, ..MlpConfig::default() };
    let cfg = mlp_config(kind, timesteps, mlp, &[2]);
    let model = Model::new(&vs.root(), &cfg).unwrap();
    (vs, model)
}

/// A conditional tiny UNet on 1×16×16 (10 labels, attention at 8×8) as `kind`: the GPU and
/// precision tests' model.
pub fn conditional_unet_16(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        kind,
        schedule: ScheduleConfig::default(),
        backbone: BackboneConfig::Unet(UnetConfig {
            num_labels: 10,
            attention_resolutions: vec![8],
            ..UnetConfig::tiny()
        }),
        data_shape: vec![1, 16, 16],
        gaussian_base: false,
        base_per_class: false,
    }
}
