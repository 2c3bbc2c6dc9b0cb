//! A Gaussian base for either model kind: the per-dimension Gaussian fit of the training data,
//! whose noisy levels have closed-form densities and MMSE denoisers. A model with a base adds
//! them to its network's outputs (the level log-densities to a CDM's logits, the noise
//! prediction to a DDM's), so the network learns only what the Gaussian misses, and starts as
//! the exact model of the fitted Gaussian. A time-free classifier gains most: without a base,
//! its input gradient must grow like 1/σ_t² on pixels the data never vary (an MNIST border),
//! which it can only learn by telling the level from the image.
use tch::{nn, Kind, Tensor};

use crate::schedule::Schedule;

/// Variance added to every dimension's: that of uniform dequantization noise on 8-bit data
/// scaled to [-1, 1], ((2/256)²/12). It keeps the level-0 density finite where the data never
/// vary.
const VARIANCE_FLOOR: f64 = (2.0 / 256.0) * (2.0 / 256.0) / 12.0;

/// Mean and variance of each data dimension, stored as untrained variables so checkpoints keep
/// them.
pub struct GaussianBase {
    mean: Tensor,
    var: Tensor,
}

impl GaussianBase {
    /// N(0, I) until [`GaussianBase::fit`] is called.
    pub fn new(vs: &nn::Path, data_shape: &[i64]) -> Self {
        let base = vs / "gaussian_base";
        let mean = base.zeros_no_train("mean", data_shape);
        let var = base.ones_no_train("var", data_shape);
        GaussianBase { mean, var }
    }

    /// Sets the mean and variance from data points `x` ([N, ..]).
    pub fn fit(&self, x: &Tensor) {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Double);
            self.mean.shallow_clone().copy_(&x.mean_dim(0, false, Kind::Double));
            self.var.shallow_clone().copy_(&(x.var_dim(0, false, false) + VARIANCE_FLOOR));
        })
    }

    /// Per level t = 0..=T+1, the mean and variance of the fitted Gaussian's x_t, flattened:
    /// √ᾱ_t·μ and ᾱ_t·v + 1 − ᾱ_t, each [T+2, D] in f64.
    fn level_moments(&self, schedule: &Schedule) -> (Tensor, Tensor) {
        let device = self.mean.device();
        let abar = Tensor::from_slice(schedule.alpha_bars()).to_device(device).unsqueeze(1);
        let mean = self.mean.to_kind(Kind::Double).flatten(0, -1).unsqueeze(0);
        let var = self.var.to_kind(Kind::Double).flatten(0, -1).unsqueeze(0);
        (abar.sqrt() * mean, &abar * var - &abar + 1.0)
    }

    /// log N(x; √ᾱ_t·μ, diag(ᾱ_t·v + 1 − ᾱ_t)) for every level: [B, T+2] for x: [B, ..], in
    /// x's kind. Computed in f64 (at t = 0 the terms of a never-varying pixel reach 1e5 and
    /// cancel) by expanding the square into two matrix products.
    pub fn log_densities(&self, x: &Tensor, schedule: &Schedule) -> Tensor {
        let (m, v) = self.level_moments(schedule);
        let precision = v.reciprocal();
        let kind = x.kind();
        let x = x.to_kind(Kind::Double).flatten(1, -1);
        let constant = (m.square() * &precision + (v * (2.0 * std::f64::consts::PI)).log()).sum_dim_intlist(
            1,
            false,
            Kind::Double,
        );
        let quadratic = x.square().matmul(&precision.tr()) - 2.0 * x.matmul(&(m * precision).tr());
        let log_density: Tensor = (quadratic + constant.unsqueeze(0)) * -0.5;
        log_density.to_kind(kind)
    }

    /// The fitted Gaussian's MMSE noise prediction at per-sample levels t ([B], Int64):
    /// σ_t·(x_t − √ᾱ_t·μ) / (ᾱ_t·v + σ_t²), shaped like x_t.
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, schedule: &Schedule) -> Tensor {
        let (m, v) = self.level_moments(schedule);
        let t = t.to_kind(Kind::Int64);
        let (m, v) = (m.index_select(0, &t), v.index_select(0, &t));
        let (_, sigma) = schedule.coefficients(&t, &m);
        let flat = x_t.to_kind(Kind::Double).flatten(1, -1);
        (sigma * (flat - m) / v).reshape(x_t.size()).to_kind(x_t.kind())
    }
}
