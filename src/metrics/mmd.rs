//! Maximum mean discrepancy between two samples (Gretton et al. 2012, JMLR 13, "A Kernel
//! Two-Sample Test", the estimate MMD²_u): the unbiased MMD² with a Gaussian kernel, the
//! sample-quality score of the CDL paper's 2-D experiments (Wu et al. 2024, arXiv:2407.08946).
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Rows per block of the kernel matrices, so 10⁵ points never build a 10⁵ × 10⁵ matrix.
const BLOCK: i64 = 2048;

/// Σ_{i,j} k(a_i, b_j) with k(a, b) = exp(−‖a − b‖²/(2h²)), for a [M, D] and b [N, D] in f64.
fn kernel_sum(a: &Tensor, b: &Tensor, bandwidth: f64) -> f64 {
    let mut total = 0.0;
    let rows = a.size()[0];
    let mut start = 0;
    while start < rows {
        let block = a.narrow(0, start, BLOCK.min(rows - start));
        let sq = block.square().sum_dim_intlist(1, true, Kind::Double)
            + b.square().sum_dim_intlist(1, false, Kind::Double).unsqueeze(0)
            - block.matmul(&b.tr()) * 2.0;
        total += (sq.clamp_min(0.0) / (-2.0 * bandwidth * bandwidth)).exp().sum(Kind::Double).double_value(&[]);
        start += BLOCK;
    }
    total
}

/// The unbiased estimate of MMD² between the laws of `x` ([M, ..]) and `y` ([N, ..]), with the
/// Gaussian kernel k(a, b) = exp(−‖a − b‖²/(2h²)) of bandwidth h:
/// Σ_{i≠j} k(x_i, x_j)/(M(M−1)) + Σ_{i≠j} k(y_i, y_j)/(N(N−1)) − 2 Σ_{i,j} k(x_i, y_j)/(MN).
/// Its expectation is MMD², zero for equal laws (so an estimate can be slightly negative).
/// The CDL code's kernel also divides by √(2πh²): multiply by 1/√(2πh²) to compare.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor, bandwidth: f64) -> Result<f64> {
    let (x, y) = (x.to_kind(Kind::Double).flatten(1, -1), y.to_kind(Kind::Double).flatten(1, -1));
    let (m, n) = (x.size()[0], y.size()[0]);
    if m < 2 || n < 2 || x.size()[1] != y.size()[1] {
        return Err(Error::Shape(format!(
            "MMD needs two samples of at least 2 points of one dimension, got {:?} and {:?}",
            x.size(),
            y.size()
        )));
    }
    if !(bandwidth > 0.0 && bandwidth.is_finite()) {
        return Err(Error::Config(format!("the MMD bandwidth must be positive, got {bandwidth}")));
    }
    // The diagonals contribute k(a, a) = 1 each: take them out.
    let within = |a: &Tensor, k: i64| (kernel_sum(a, a, bandwidth) - k as f64) / (k * (k - 1)) as f64;
    Ok(within(&x, m) + within(&y, n) - 2.0 * kernel_sum(&x, &y, bandwidth) / (m * n) as f64)
}
