//! A Gaussian base for either model kind: the Gaussian fit of the training data (its mean and
//! covariance), whose noisy levels have closed-form densities and MMSE denoisers. A model with a
//! base adds them to its network's outputs (the level log-densities to a CDM's logits, the
//! noise prediction to a DDM's), so the network learns only what the Gaussian misses, and
//! starts as the exact model of the fitted Gaussian. A time-free classifier gains most. At high
//! noise the posterior mean is nearly linear in x_t, so the Gaussian's (a smooth, blurred
//! digit on MNIST) is nearly right, where an input gradient learnt from scratch is still high
//! frequency noise; and without a base the gradient must grow like 1/σ_t² on pixels the data
//! never vary (an MNIST border), which it can only learn by telling the level from the image.
use tch::{nn, Kind, Tensor};

use crate::schedule::Schedule;

/// Variance added to every principal direction's: that of uniform dequantization noise on
/// 8-bit data scaled to [-1, 1], ((2/256)²/12). It keeps the level-0 density finite along
/// directions the data never vary in.
const VARIANCE_FLOOR: f64 = (2.0 / 256.0) * (2.0 / 256.0) / 12.0;

/// The fitted Gaussian N(μ, U diag(λ) Uᵀ), stored as untrained variables so checkpoints keep
/// it: μ [D], the principal directions U [D, D] (columns) and their variances λ [D].
pub struct GaussianBase {
    mean: Tensor,
    basis: Tensor,
    var: Tensor,
}

impl GaussianBase {
    /// N(0, I) until [`GaussianBase::fit`] is called.
    pub fn new(vs: &nn::Path, data_shape: &[i64]) -> Self {
        let base = vs / "gaussian_base";
        let d: i64 = data_shape.iter().product();
        let mean = base.zeros_no_train("mean", &[d]);
        let basis = base.var_copy("basis", &Tensor::eye(d, (Kind::Float, vs.device())));
        let _ = basis.set_requires_grad(false);
        let var = base.ones_no_train("var", &[d]);
        GaussianBase { mean, basis, var }
    }

    /// Sets the mean and covariance from data points `x` ([N, ..]).
    pub fn fit(&self, x: &Tensor) {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Double).flatten(1, -1);
            let mean = x.mean_dim(0, false, Kind::Double);
            let centred = &x - &mean;
            let cov = centred.tr().matmul(&centred) / x.size()[0] as f64;
            let (var, basis) = cov.linalg_eigh("L");
            self.mean.shallow_clone().copy_(&mean);
            self.basis.shallow_clone().copy_(&basis);
            self.var.shallow_clone().copy_(&(var.clamp_min(0.0) + VARIANCE_FLOOR));
        })
    }

    /// x ([B, ..]) in the principal coordinates, f64: [B, D].
    fn project(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Double).flatten(1, -1).matmul(&self.basis.to_kind(Kind::Double))
    }

    /// Per level t = 0..=T+1, the mean and variances of the fitted Gaussian's x_t in the
    /// principal coordinates: √ᾱ_t·Uᵀμ and ᾱ_t·λ + 1 − ᾱ_t, each [T+2, D] in f64.
    fn level_moments(&self, schedule: &Schedule) -> (Tensor, Tensor) {
        let device = self.mean.device();
        let abar = Tensor::from_slice(schedule.alpha_bars()).to_device(device).unsqueeze(1);
        let mean = self.project(&self.mean.unsqueeze(0));
        let var = self.var.to_kind(Kind::Double).unsqueeze(0);
        (abar.sqrt() * mean, &abar * var - &abar + 1.0)
    }

    /// log N(x; √ᾱ_t·μ, ᾱ_t·Σ + (1 − ᾱ_t)·I) for every level: [B, T+2] for x: [B, ..], in
    /// x's kind. Computed in f64 (at t = 0 the terms of a never-varying direction reach 1e5
    /// and cancel) by expanding the square into two matrix products.
    pub fn log_densities(&self, x: &Tensor, schedule: &Schedule) -> Tensor {
        let (m, v) = self.level_moments(schedule);
        let precision = v.reciprocal();
        let z = self.project(x);
        let constant = (m.square() * &precision + (v * (2.0 * std::f64::consts::PI)).log()).sum_dim_intlist(
            1,
            false,
            Kind::Double,
        );
        let quadratic = z.square().matmul(&precision.tr()) - 2.0 * z.matmul(&(m * precision).tr());
        let log_density: Tensor = (quadratic + constant.unsqueeze(0)) * -0.5;
        log_density.to_kind(x.kind())
    }

    /// The fitted Gaussian's MMSE noise prediction at per-sample levels t ([B], Int64):
    /// σ_t·U·diag(1/(ᾱ_t·λ + σ_t²))·Uᵀ(x_t − √ᾱ_t·μ), shaped like x_t.
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, schedule: &Schedule) -> Tensor {
        let (m, v) = self.level_moments(schedule);
        let t = t.to_kind(Kind::Int64);
        let (m, v) = (m.index_select(0, &t), v.index_select(0, &t));
        let (_, sigma) = schedule.coefficients(&t, &m);
        let whitened = (self.project(x_t) - m) / v;
        (sigma * whitened.matmul(&self.basis.to_kind(Kind::Double).tr())).reshape(x_t.size()).to_kind(x_t.kind())
    }
}
