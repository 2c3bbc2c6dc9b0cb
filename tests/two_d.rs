//! The CDL paper's 2-D data and metric: each built-in density integrates to one and agrees
//! with its own sampler, and the unbiased MMD² matches a hand computation and the closed form
//! of two Gaussians.
mod common;

use cdm::data::Dataset;
use cdm::metrics::mmd::mmd2_unbiased;
use cdm::rng::Rng;
use common::assert_close;
use tch::{Kind, Tensor};

/// ∫ p over a grid of cell `step` on [−lim, lim]², and the negative entropy ∫ p log p.
fn integrate(spec: &str, lim: f64, step: f64) -> (f64, f64) {
    let data = Dataset::open(spec).unwrap();
    let density = data.density().unwrap();
    let n = (2.0 * lim / step).round() as i64;
    let axis = (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) + 0.5) * step - lim;
    let (mut mass, mut neg_entropy) = (0.0, 0.0);
    for i in 0..n {
        let row = Tensor::stack(
            &[Tensor::full([n], axis.double_value(&[i]), (Kind::Double, tch::Device::Cpu)), axis.shallow_clone()],
            1,
        );
        let log_p = density.log_prob(&row);
        let p = log_p.exp();
        mass += p.sum(Kind::Double).double_value(&[]) * step * step;
        // 0·log 0 = 0 far from the data.
        neg_entropy += (&p * log_p.nan_to_num(0.0, 0.0, 0.0)).sum(Kind::Double).double_value(&[]) * step * step;
    }
    (mass, neg_entropy)
}

#[test]
fn curve_and_ring_densities_are_normalised_and_match_their_samplers() {
    // The midpoint rule on a smooth density whose finest scale is σ errs by about
    // exp(−2π²σ²/h²): far below the tolerance for h = 0.05 and σ ≥ 0.05 (the moons' noise is
    // 0.06 and 0.09 on its axes), and h = 0.1 for the spirals' 0.1.
    for (spec, lim) in [("moons", 4.5), ("two-spirals", 4.5), ("eight-gaussians", 4.0), ("circle", 1.6)] {
        let step = if spec == "two-spirals" { 0.1 } else { 0.05 };
        let (mass, neg_entropy) = integrate(spec, lim, step);
        assert_close(mass, 1.0, 1e-3, &format!("{spec}: total mass"));
        // Samples score their own density at the negative entropy on average; a sampler that
        // disagreed with the density would score lower (a cross-entropy).
        let data = Dataset::open(spec).unwrap();
        let x = data.eval_points(5000, 3);
        let log_p = data.density().unwrap().log_prob(&x);
        let mean = log_p.mean(Kind::Double).double_value(&[]);
        let error = log_p.std(true).double_value(&[]) / (5000f64).sqrt();
        assert_close(mean, neg_entropy, 4.0 * error + 3e-3, &format!("{spec}: E log p of samples against ∫ p log p"));
    }
}

#[test]
fn two_modes_is_the_cdl_papers_one_dimensional_toy() {
    // ½N(−5, 1) + ½N(5, 1): mass one, mean 0, variance 1 + 25, and half the points above zero.
    let data = Dataset::open("two-modes").unwrap();
    assert_eq!(data.shape(), vec![1]);
    let step = 0.01;
    let x = ((Tensor::arange(2400, (Kind::Double, tch::Device::Cpu)) + 0.5) * step - 12.0).reshape([-1, 1]);
    let mass = data.density().unwrap().log_prob(&x).exp().sum(Kind::Double).double_value(&[]) * step;
    assert_close(mass, 1.0, 1e-9, "total mass");
    let y = data.eval_points(20_000, 1);
    assert_close(y.mean(Kind::Double).double_value(&[]), 0.0, 4.0 * (26.0f64 / 20_000.0).sqrt(), "mean");
    assert_close(y.var(true).double_value(&[]), 26.0, 0.5, "variance");
    let above = y.gt(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    assert_close(above, 0.5, 0.015, "share of the upper mode");
}

#[test]
fn mmd_matches_a_hand_computation() {
    // x = {0, 1}, y = {0, 2}, h = 1: within x e^{−1/2}, within y e^{−2}, across
    // (1 + e^{−2} + e^{−1/2} + e^{−1/2})/4.
    let x = Tensor::from_slice(&[0.0, 1.0]).reshape([2, 1]);
    let y = Tensor::from_slice(&[0.0, 2.0]).reshape([2, 1]);
    let (a, b) = ((-0.5f64).exp(), (-2.0f64).exp());
    let expected = a + b - 2.0 * (1.0 + b + 2.0 * a) / 4.0;
    assert_close(mmd2_unbiased(&x, &y, 1.0).unwrap(), expected, 1e-14, "MMD² by hand");
    // Bandwidth 2 scales the squared distances by 1/4.
    let (a, b) = ((-0.125f64).exp(), (-0.5f64).exp());
    assert_close(mmd2_unbiased(&x, &y, 2.0).unwrap(), a + b - (1.0 + b + 2.0 * a) / 2.0, 1e-14, "h = 2");
    assert!(mmd2_unbiased(&x, &y, 0.0).is_err());
    assert!(mmd2_unbiased(&x.narrow(0, 0, 1), &y, 1.0).is_err());
}

#[test]
fn mmd_of_two_gaussians_matches_its_closed_form() {
    // x ~ N(0, s²I), y ~ N(m, s²I) in d dimensions: E k(x, x') = c = (h²/(h² + 2s²))^{d/2} and
    // E k(x, y) = c·exp(−|m|²/(2(h² + 2s²))), so MMD² = 2c(1 − exp(−|m|²/(2(h² + 2s²)))).
    let (d, s, h, shift) = (2i64, 0.5f64, 0.7f64, 0.6f64);
    let n = 3000;
    let mut rng = Rng::new(9);
    let x = rng.normal(&[n, d], Kind::Double) * s;
    let y = rng.normal(&[n, d], Kind::Double) * s + shift;
    let c = (h * h / (h * h + 2.0 * s * s)).powf(d as f64 / 2.0);
    let m2 = shift * shift * d as f64;
    let expected = 2.0 * c * (1.0 - (-m2 / (2.0 * (h * h + 2.0 * s * s))).exp());
    // The estimator's standard deviation at n = 3000 is about 0.003 here.
    assert_close(mmd2_unbiased(&x, &y, h).unwrap(), expected, 0.012, "MMD² of shifted Gaussians");
    let same = rng.normal(&[n, d], Kind::Double) * s;
    assert_close(mmd2_unbiased(&x, &same, h).unwrap(), 0.0, 0.003, "MMD² of one law");
}
