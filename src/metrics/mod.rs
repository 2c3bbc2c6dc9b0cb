//! Scores that turn model outputs into numbers: AUROC for out-of-distribution detection, the
//! confusion matrix of the noise-level classifier, the Fréchet distance behind FID, and the
//! MMD between samples.
use tch::{Kind, Tensor};

use crate::{Error, Result};

pub mod fid;
pub mod mmd;

/// Area under the ROC curve for telling `positive` scores from `negative` ones (higher score =
/// more positive): P(s₊ > s₋) + ½ P(s₊ = s₋), the Mann–Whitney statistic, with tied scores
/// given their average rank.
pub fn auroc(positive: &[f64], negative: &[f64]) -> Result<f64> {
    if positive.is_empty() || negative.is_empty() {
        return Err(Error::Data("AUROC needs at least one score of each kind".into()));
    }
    if positive.iter().chain(negative).any(|s| s.is_nan()) {
        return Err(Error::Data("AUROC: a score is NaN".into()));
    }
    let mut all: Vec<(f64, bool)> =
        positive.iter().map(|&s| (s, true)).chain(negative.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < all.len() {
        let end = start + all[start..].iter().take_while(|(s, _)| *s == all[start].0).count();
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        rank_sum += mean_rank * all[start..end].iter().filter(|(_, p)| *p).count() as f64;
        start = end;
    }
    let (n_pos, n_neg) = (positive.len() as f64, negative.len() as f64);
    Ok((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// `counts[truth][predicted]` over `classes` classes.
pub fn confusion_matrix(truth: &[i64], predicted: &[i64], classes: usize) -> Result<Vec<Vec<u64>>> {
    if truth.len() != predicted.len() {
        return Err(Error::Shape(format!("{} true labels but {} predictions", truth.len(), predicted.len())));
    }
    let mut counts = vec![vec![0u64; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        let index = |c: i64| usize::try_from(c).ok().filter(|&c| c < classes);
        match (index(t), index(p)) {
            (Some(t), Some(p)) => counts[t][p] += 1,
            _ => return Err(Error::Data(format!("label {t} or prediction {p} is outside 0..{classes}"))),
        }
    }
    Ok(counts)
}

/// Mean and covariance of a set of feature vectors, in f64.
#[derive(Debug)]
pub struct GaussianStats {
    /// [D]
    pub mean: Tensor,
    /// [D, D], normalised by N − 1.
    pub cov: Tensor,
    /// How many vectors they summarise.
    pub n: i64,
}

impl GaussianStats {
    /// Statistics of `features`: [N, D], N ≥ 2.
    pub fn of(features: &Tensor) -> Result<Self> {
        let size = features.size();
        if size.len() != 2 || size[0] < 2 {
            return Err(Error::Shape(format!("feature statistics need [N ≥ 2, D], got {size:?}")));
        }
        let f = features.to_kind(Kind::Double);
        let mean = f.mean_dim(0, false, Kind::Double);
        let centred = &f - mean.unsqueeze(0);
        let cov = centred.tr().matmul(&centred) / (size[0] - 1) as f64;
        Ok(GaussianStats { mean, cov, n: size[0] })
    }
}

/// Fréchet distance between two Gaussians, ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½; with
/// Inception pool features it is FID. tr (Σ₁Σ₂)^½ is the sum of the square roots of the
/// eigenvalues of the symmetric Σ₁^½ Σ₂ Σ₁^½, which has the same spectrum.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    if a.mean.size() != b.mean.size() {
        return Err(Error::Shape(format!("feature sizes differ: {:?} and {:?}", a.mean.size(), b.mean.size())));
    }
    let sqrt_psd = |m: &Tensor| {
        let (values, vectors) = m.linalg_eigh("L");
        (&vectors * values.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&vectors.tr())
    };
    let root_a = sqrt_psd(&a.cov);
    let middle = root_a.matmul(&b.cov).matmul(&root_a);
    let middle = (&middle + middle.tr()) / 2.0;
    let trace_sqrt = middle.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[]);
    let mean_term = (&a.mean - &b.mean).square().sum(Kind::Double).double_value(&[]);
    let trace = |m: &Tensor| m.trace().double_value(&[]);
    Ok(mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * trace_sqrt)
}

/// Typicality scores for out-of-distribution detection: how far a vector of per-level
/// log-densities (log p_t(x)/D at several noise levels t, all from one CDM forward pass) lies
/// from those of in-distribution data, level by level, as z-scores against the mean and
/// standard deviation of in-distribution vectors. Plain likelihood ranks simple images high
/// even when they are foreign; typical data must also have the right profile across levels.
/// The levels are not combined through their covariance: adjacent noise levels carry almost
/// the same information, and inverting their nearly singular covariance amplifies noise.
pub struct Typicality {
    mean: Tensor,
    std: Tensor,
}

impl Typicality {
    /// Fits the per-level mean and standard deviation of `features`: [N, L], N ≥ 2.
    pub fn fit(features: &Tensor) -> Result<Self> {
        let stats = GaussianStats::of(features)?;
        let var = stats.cov.diagonal(0, 0, 1);
        let floor = 1e-12 + 1e-9 * var.mean(Kind::Double).double_value(&[]);
        Ok(Typicality { mean: stats.mean, std: var.clamp_min(floor).sqrt() })
    }

    /// L, the length of the profiles it was fitted on.
    pub fn levels(&self) -> i64 {
        self.mean.size()[0]
    }

    /// z-scores [N, L] of `features`: [N, L].
    pub fn z_scores(&self, features: &Tensor) -> Tensor {
        (features.to_kind(Kind::Double) - self.mean.unsqueeze(0)) / self.std.unsqueeze(0)
    }

    /// −Σ_t z_t²: minus the squared distance with per-level variances ([N]; higher is more typical).
    pub fn sum_of_squares(&self, features: &Tensor) -> Tensor {
        -self.z_scores(features).square().sum_dim_intlist(1, false, Kind::Double)
    }

    /// −max_t |z_t|: the most atypical level decides ([N]; higher is more typical).
    pub fn max_abs(&self, features: &Tensor) -> Tensor {
        -self.z_scores(features).abs().amax(1, false)
    }
}
