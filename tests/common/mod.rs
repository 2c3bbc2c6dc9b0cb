//! Fixtures shared by the integration tests.
#![allow(dead_code)]
use tch::{Kind, Tensor};

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
