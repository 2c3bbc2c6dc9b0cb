//! Likelihoods. A CDM's is exact in one forward pass (Yadin et al. 2024, arXiv:2402.10095,
//! Theorem 3.2): [`one_pass`]. A denoiser's is an integral of its denoising error over log SNR,
//! the I-MMSE identity (Kong et al. 2023, arXiv:2302.03792): [`immse`], relative to a Gaussian
//! [`reference`], with the [`noised`] adapters that give the density of noised data and the
//! noise classifier inside a denoiser (Wu et al. 2024, arXiv:2407.08946). 8-bit images are
//! scored in bits/dim of the discrete values through [`dequantize`](mod@dequantize).
use tch::Tensor;

pub mod dequantize;
pub mod immse;
pub mod noised;
pub mod one_pass;
pub mod reference;

pub use dequantize::{
    bits_per_dim, bits_per_dim_8bit, convention_for, dequantize, spread_in_bins, spread_points_in_bins, Dequantization,
};
pub use immse::{ddm_log_prob, immse_log_prob};
pub use noised::{noise_logits, noised_predictor};
pub use one_pass::{log_prob, log_prob_at_levels, log_standard_normal};
pub use reference::GaussianReference;

/// A per-sample factor `v` ([B]) shaped to broadcast over `like` ([B, ..]), in its kind.
pub(crate) fn per_point(v: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.resize(like.dim(), 1);
    v.to_kind(like.kind()).reshape(&shape[..])
}

/// ‖a‖² per sample: [B, ..] → [B].
pub(crate) fn per_sample_sum_of_squares(a: &Tensor) -> Tensor {
    a.square().flatten(1, -1).sum_dim_intlist(1, false, a.kind())
}
