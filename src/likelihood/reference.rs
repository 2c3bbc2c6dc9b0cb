//! The Gaussian an I-MMSE likelihood is taken relative to (Wu et al. 2024, arXiv:2407.08946, section 3): its entropy,
//! its MMSE curve, its density and its optimal noise prediction, all in closed form.
use tch::{Kind, Tensor};

/// The Gaussian the I-MMSE estimate is taken relative to: N(μ, diag λ) in the data's own
/// coordinates (N(0, I) by default, or a fit of the data's per-dimension moments).
pub struct GaussianReference {
    /// μ: [D], f64.
    pub mean: Tensor,
    /// λ: [D], f64, positive.
    pub var: Tensor,
}

impl GaussianReference {
    /// N(0, I) in `dim` dimensions.
    pub fn standard(dim: i64) -> Self {
        GaussianReference {
            mean: Tensor::zeros([dim], (Kind::Double, tch::Device::Cpu)),
            var: Tensor::ones([dim], (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// Per-dimension mean and variance of points `x` ([N, ..]), the variance floored at
    /// `floor` so a never-varying dimension keeps a finite density.
    pub fn fit(x: &Tensor, floor: f64) -> Self {
        let x = x.to_kind(Kind::Double).flatten(1, -1);
        GaussianReference { mean: x.mean_dim(0, false, Kind::Double), var: x.var_dim(0, false, false).clamp_min(floor) }
    }

    /// The Gaussian's entropy h_G = (D/2)·log(2πe) + ½·Σ log λ_k, in nats.
    pub fn entropy(&self) -> f64 {
        let dim = self.var.size()[0] as f64;
        0.5 * dim * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln()
            + 0.5 * self.var.log().sum(Kind::Double).double_value(&[])
    }

    /// mmse_G(γ) = Σ_k σ(γ + log λ_k), its optimal predictor's expected error: [B] for γ [B].
    pub fn mmse(&self, gamma: &Tensor) -> Tensor {
        (gamma.to_kind(Kind::Double).unsqueeze(1) + self.var.to_device(gamma.device()).log().unsqueeze(0))
            .sigmoid()
            .sum_dim_intlist(1, false, Kind::Double)
    }

    /// log N(x; μ, diag λ): [B] for x [B, ..], in x's kind.
    pub fn log_density(&self, x: &Tensor) -> Tensor {
        let (mean, var) = self.on(x);
        let centred = x.flatten(1, -1) - mean;
        let terms = centred.square() / &var + (var * (2.0 * std::f64::consts::PI)).log();
        terms.sum_dim_intlist(1, false, x.kind()) * -0.5
    }

    /// Its optimal noise prediction at log SNR γ ([B]): √σ(−γ)·(z − √σ(γ)·μ)/(σ(γ)·λ + σ(−γ)),
    /// shaped like z.
    pub fn eps(&self, z: &Tensor, gamma: &Tensor) -> Tensor {
        let (mean, var) = self.on(z);
        let gamma = gamma.to_kind(z.kind()).unsqueeze(1);
        let (signal, noise) = (gamma.sigmoid(), (-&gamma).sigmoid());
        let centred = z.flatten(1, -1) - signal.sqrt() * mean;
        (noise.sqrt() * centred / (signal * var + noise)).reshape(z.size())
    }

    /// μ and λ as [1, D] in the kind and on the device of `like`.
    fn on(&self, like: &Tensor) -> (Tensor, Tensor) {
        let cast = |t: &Tensor| t.to_kind(like.kind()).to_device(like.device()).unsqueeze(0);
        (cast(&self.mean), cast(&self.var))
    }
}
