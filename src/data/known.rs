//! Built-in densities with exact log-densities, to check learned likelihoods against: the
//! uniform hypercube of the CDM paper's Fig. 3, Gaussian mixtures (exact at every noise level,
//! with the exact posterior mean E[x0 | x_t]), a checkerboard and concentric rings.
use std::f64::consts::PI;

use tch::{Kind, Tensor};

use crate::rng::Rng;

/// A distribution we can sample and whose log-density we know in closed form.
pub trait KnownDensity: Send {
    /// Shape of one sample.
    fn shape(&self) -> Vec<i64>;
    /// `n` samples, Double, [n, ..].
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor;
    /// Exact log p(x) in nats: [B] for x: [B, ..] (−∞ outside the support).
    fn log_prob(&self, x: &Tensor) -> Tensor;
    /// Exact log p_t(x_t) of the noised data x_t = √ᾱ·x0 + √(1-ᾱ)·ε, where known.
    fn log_prob_noisy(&self, _x_t: &Tensor, _alpha_bar: f64) -> Option<Tensor> {
        None
    }
    /// Exact E[x0 | x_t] for ᾱ > 0, where known.
    fn posterior_mean(&self, _x_t: &Tensor, _alpha_bar: f64) -> Option<Tensor> {
        None
    }
}

/// U[-g/2, g/2]^D, log p = -D ln g inside (the paper's Fig. 3).
pub struct UniformCube {
    pub shape: Vec<i64>,
    pub width: f64,
}

impl KnownDensity for UniformCube {
    fn shape(&self) -> Vec<i64> {
        self.shape.clone()
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        let mut shape = vec![n as i64];
        shape.extend(&self.shape);
        (rng.uniform(&shape, Kind::Double) - 0.5) * self.width
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        let dim = self.shape.iter().product::<i64>() as f64;
        let inside = x.abs().le(self.width / 2.0).flatten(1, -1).all_dim(1, false);
        Tensor::full([x.size()[0]], -dim * self.width.ln(), (x.kind(), x.device()))
            .where_self(&inside, &Tensor::full([1], f64::NEG_INFINITY, (x.kind(), x.device())))
    }
    /// Per dimension, x_t = a·u + s·ε with u ~ U[-g/2, g/2] has density
    /// (Φ((x + ag/2)/s) − Φ((x − ag/2)/s))/(ag), computed on the side of 0 where the
    /// difference of Gaussian tails does not cancel.
    fn log_prob_noisy(&self, x_t: &Tensor, alpha_bar: f64) -> Option<Tensor> {
        if alpha_bar >= 1.0 {
            return Some(self.log_prob(x_t));
        }
        let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        let half = a * self.width / 2.0;
        let z = x_t.abs().flatten(1, -1); // the density is even in each coordinate
        let tail = |u: Tensor| (u / std::f64::consts::SQRT_2).erfc() * 0.5; // 1 − Φ(u)
        let mass = tail((&z - half) / s) - tail((&z + half) / s);
        let per_dim = mass.log() - (a * self.width).ln();
        Some(per_dim.sum_dim_intlist(1, false, x_t.kind()))
    }
}

/// A mixture of isotropic Gaussians Σ_k w_k N(μ_k, s_k² I).
pub struct GaussianMixture {
    /// Mixture weights [K], summing to one.
    pub weights: Tensor,
    /// Means [K, D].
    pub means: Tensor,
    /// Standard deviations [K].
    pub stds: Tensor,
}

impl GaussianMixture {
    /// Eight components on a circle of radius 2, std 0.3, weights 1..8 (normalised): an
    /// asymmetric 2-D test density.
    pub fn circle_2d() -> Self {
        let k = 8;
        let angles: Vec<f64> = (0..k).map(|i| 2.0 * PI * i as f64 / k as f64).collect();
        let means: Vec<f64> = angles.iter().flat_map(|a| [2.0 * a.cos(), 2.0 * a.sin()]).collect();
        let weights: Vec<f64> = (1..=k).map(|i| i as f64 / 36.0).collect();
        GaussianMixture {
            weights: Tensor::from_slice(&weights),
            means: Tensor::from_slice(&means).reshape([k as i64, 2]),
            stds: Tensor::full([k as i64], 0.3, (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// `k` components in `dim` dimensions: means N(0, I), std 0.5, equal weights; fixed by `seed`.
    pub fn random(dim: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        GaussianMixture {
            weights: Tensor::full([k as i64], 1.0 / k as f64, (Kind::Double, tch::Device::Cpu)),
            means: rng.normal(&[k as i64, dim as i64], Kind::Double),
            stds: Tensor::full([k as i64], 0.5, (Kind::Double, tch::Device::Cpu)),
        }
    }

    fn dim(&self) -> i64 {
        self.means.size()[1]
    }

    /// log w_k + log N(x_t; √ᾱ μ_k, v_k I) for every component: [B, K], and v_k: [K].
    fn component_terms(&self, x_t: &Tensor, alpha_bar: f64) -> (Tensor, Tensor) {
        let (x_t, means, weights, stds) = self.on(x_t);
        let var = stds.square() * alpha_bar + (1.0 - alpha_bar);
        let diff = x_t.unsqueeze(1) - means.unsqueeze(0) * alpha_bar.sqrt();
        let sq = diff.square().sum_dim_intlist(2, false, x_t.kind());
        let d = self.dim() as f64;
        let log_norm = (&var * (2.0 * PI)).log() * (-0.5 * d);
        (weights.log().unsqueeze(0) + log_norm.unsqueeze(0) - sq / (&var * 2.0).unsqueeze(0), var)
    }

    fn on(&self, x: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
        let cast = |t: &Tensor| t.to_kind(x.kind()).to_device(x.device());
        (x.flatten(1, -1), cast(&self.means), cast(&self.weights), cast(&self.stds))
    }
}

impl KnownDensity for GaussianMixture {
    fn shape(&self) -> Vec<i64> {
        vec![self.dim()]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        let cdf = Vec::<f64>::try_from(self.weights.cumsum(0, Kind::Double)).unwrap_or_default();
        let picks: Vec<i64> = (0..n)
            .map(|_| {
                let u = rng.unit();
                cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1) as i64
            })
            .collect();
        let picks = Tensor::from_slice(&picks);
        let noise = rng.normal(&[n as i64, self.dim()], Kind::Double);
        self.means.index_select(0, &picks) + noise * self.stds.index_select(0, &picks).unsqueeze(1)
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        self.component_terms(x, 1.0).0.logsumexp([1], false)
    }
    fn log_prob_noisy(&self, x_t: &Tensor, alpha_bar: f64) -> Option<Tensor> {
        Some(self.component_terms(x_t, alpha_bar).0.logsumexp([1], false))
    }
    fn posterior_mean(&self, x_t: &Tensor, alpha_bar: f64) -> Option<Tensor> {
        let (terms, var) = self.component_terms(x_t, alpha_bar);
        let resp = terms.softmax(1, x_t.kind());
        let (x, means, _, stds) = self.on(x_t);
        let a = alpha_bar.sqrt();
        // Per component, x0 | x_t is Gaussian with mean μ_k + (a s_k²/v_k)(x_t - a μ_k).
        let gain = (stds.square() * a / var).unsqueeze(0).unsqueeze(2);
        let per_k = means.unsqueeze(0) + gain * (x.unsqueeze(1) - means.unsqueeze(0) * a);
        Some((resp.unsqueeze(2) * per_k).sum_dim_intlist(1, false, x_t.kind()).reshape(x_t.size()))
    }
}

/// Uniform on the 8 dark squares of a 4×4 board on [-2, 2]²: log p = -ln 8 there.
pub struct Checkerboard;

impl KnownDensity for Checkerboard {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        // A point in [0, 4) x [0, 2), then shifted up a square where the column needs it.
        let u = rng.uniform(&[n as i64, 2], Kind::Double);
        let x = u.select(1, 0) * 4.0;
        let y = u.select(1, 1) * 2.0;
        let row = y.floor() * 2.0 + (x.floor() + y.floor() * 2.0).remainder(2.0);
        let y = row + y.frac();
        Tensor::stack(&[x - 2.0, y - 2.0], 1)
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        let cells = (x + 2.0).floor();
        let inside = x.abs().lt(2.0).all_dim(1, false);
        let dark = cells.sum_dim_intlist(1, false, x.kind()).remainder(2.0).eq(0.0);
        let value = Tensor::full([x.size()[0]], -(8f64.ln()), (x.kind(), x.device()));
        value.where_self(&inside.logical_and(&dark), &Tensor::full([1], f64::NEG_INFINITY, (x.kind(), x.device())))
    }
}

/// Three concentric rings, radii 0.6, 1.2, 1.8, equal weight; the radius is a normal with
/// std 0.1 truncated to r > 0 and the angle uniform, so p(x) = Σ_j N⁺(|x|; r_j, σ²)/(3·2π|x|).
pub struct Rings;

const RING_RADII: [f64; 3] = [0.6, 1.2, 1.8];
const RING_STD: f64 = 0.1;

impl KnownDensity for Rings {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        let mut points = Vec::with_capacity(2 * n);
        while points.len() < 2 * n {
            let ring = RING_RADII[(rng.unit() * 3.0) as usize % 3];
            let r = ring + RING_STD * rng.normal(&[1], Kind::Double).double_value(&[0]);
            if r > 0.0 {
                let angle = 2.0 * PI * rng.unit();
                points.extend([r * angle.cos(), r * angle.sin()]);
            }
        }
        Tensor::from_slice(&points).reshape([n as i64, 2])
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        let r = x.square().sum_dim_intlist(1, false, x.kind()).sqrt();
        let terms: Vec<Tensor> = RING_RADII
            .iter()
            .map(|&ring| {
                // log N(r; ring, σ²) - log Φ(ring/σ) (truncation to r > 0)
                let log_trunc = (0.5 * erfc(-ring / RING_STD / std::f64::consts::SQRT_2)).ln();
                (&r - ring).square() / (-2.0 * RING_STD * RING_STD) - (RING_STD * (2.0 * PI).sqrt()).ln() - log_trunc
            })
            .collect();
        Tensor::stack(&terms, 1).logsumexp([1], false) - 3f64.ln() - (r * (2.0 * PI)).log()
    }
}

/// erfc through libtorch (a scalar, so no extra crate is needed).
fn erfc(x: f64) -> f64 {
    Tensor::from(x).erfc().double_value(&[])
}
