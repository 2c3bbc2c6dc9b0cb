//! Built-in densities with exact log-densities, to check learned likelihoods against: the
//! uniform hypercube of the CDM paper's Fig. 3, Gaussian mixtures (exact at every noise level,
//! with the exact posterior mean E[x0 | x_t]), a checkerboard, concentric rings, and the 2-D
//! sets of the CDL paper (Wu et al. 2024, arXiv:2407.08946): moons, two spirals,
//! eight Gaussians and a circle. Moons and spirals are curves blurred by noise, whose density
//! is a one-dimensional integral along the curve, taken by the midpoint rule on nodes closely
//! spaced against the noise (its error is far below any model's).
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
    /// Whether the density jumps at its support's edges, as a box's does at its faces: there
    /// Fourier features sharpen the learned log-density (docs/results.md §9.1, §15); on smooth
    /// densities they cost accuracy.
    fn hard_edges(&self) -> bool {
        false
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
    fn hard_edges(&self) -> bool {
        true
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

impl GaussianMixture {
    /// The CDL code's eight Gaussians: centres 4/1.414 from the origin every 45°, std
    /// 0.25/1.414, equal weights.
    pub fn eight_gaussians() -> Self {
        let k = 8;
        let radius = 4.0 / 1.414;
        let means: Vec<f64> =
            (0..k).flat_map(|i| [radius * (PI / 4.0 * i as f64).cos(), radius * (PI / 4.0 * i as f64).sin()]).collect();
        GaussianMixture {
            weights: Tensor::full([k], 1.0 / k as f64, (Kind::Double, tch::Device::Cpu)),
            means: Tensor::from_slice(&means).reshape([k, 2]),
            stds: Tensor::full([k], 0.25 / 1.414, (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// The CDL paper's 1-D toy: ½N(−5, 1) + ½N(5, 1), two modes far apart, so that a parallel
    /// sampler's first iterates, pure noise at every level, lie between them.
    pub fn two_modes() -> Self {
        GaussianMixture {
            weights: Tensor::from_slice(&[0.5, 0.5]),
            means: Tensor::from_slice(&[-5.0, 5.0]).reshape([2, 1]),
            stds: Tensor::from_slice(&[1.0, 1.0]),
        }
    }
}

/// Nodes of the midpoint rule on [0, 1] for the curve densities: neighbouring nodes lie at most
/// 0.02 (moons) and 0.03 (spirals) apart, against noise of std 0.06 and 0.1, so the rule is
/// exact to about 1e-3 relative where the curves end and far better elsewhere.
const CURVE_NODES: i64 = 512;

/// Midpoints (k + ½)/K of [0, 1]: [K], f64.
fn midpoints(k: i64) -> Tensor {
    (Tensor::arange(k, (Kind::Double, tch::Device::Cpu)) + 0.5) / k as f64
}

/// scikit-learn's `make_moons` with noise 0.03, stretched as in the CDL code: x ↦ 2(x + 0.3) − 1,
/// y ↦ 3(y + 0.3) − 1 (its final standardisation by the sample's own moments is left out, so
/// the density is fixed). Each moon has half the mass, its angle uniform on [0, π].
pub struct Moons;

const MOONS_NOISE: f64 = 0.03;
const MOONS_STRETCH: [f64; 2] = [2.0, 3.0];

impl Moons {
    /// Points on the two arcs, before noise, at angle fractions `u` ([N] in [0, 1]): [2, N, 2]
    /// (upper moon, then lower), stretched.
    fn arcs(u: &Tensor) -> Tensor {
        let theta = u * PI;
        let upper = Tensor::stack(&[theta.cos(), theta.sin()], 1);
        let lower = Tensor::stack(&[-theta.cos() + 1.0, -theta.sin() + 0.5], 1);
        let stretch = Tensor::from_slice(&MOONS_STRETCH).unsqueeze(0);
        let stretched = |p: Tensor| (p + 0.3) * &stretch - 1.0;
        Tensor::stack(&[stretched(upper), stretched(lower)], 0)
    }
}

impl KnownDensity for Moons {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        let u = rng.uniform(&[n as i64], Kind::Double);
        let moon = rng.uniform(&[n as i64], Kind::Double).lt(0.5).to_kind(Kind::Int64);
        let arcs = Moons::arcs(&u);
        let points = arcs.select(0, 0).where_self(&moon.eq(0).unsqueeze(1), &arcs.select(0, 1));
        let noise = rng.normal(&[n as i64, 2], Kind::Double) * MOONS_NOISE;
        points + noise * Tensor::from_slice(&MOONS_STRETCH).unsqueeze(0)
    }
    /// ½ Σ_moon ∫_0^1 N(x; arc(u), diag(0.03·stretch)²) du, by the midpoint rule.
    fn log_prob(&self, x: &Tensor) -> Tensor {
        let std = Tensor::from_slice(&MOONS_STRETCH) * MOONS_NOISE;
        let nodes = Moons::arcs(&midpoints(CURVE_NODES)).reshape([-1, 2]).to_kind(x.kind()).to_device(x.device());
        let std = std.to_kind(x.kind()).to_device(x.device());
        let z = (x.unsqueeze(1) - nodes.unsqueeze(0)) / &std;
        let log_norm = std.log().sum(x.kind()) + (2.0 * PI).ln();
        let terms = z.square().sum_dim_intlist(2, false, x.kind()) * -0.5 - log_norm;
        terms.logsumexp([1], false) - ((2 * CURVE_NODES) as f64).ln()
    }
}

/// The two spirals of the FFJORD and CDL code: n = 3π·√u (u uniform), the point
/// (−n·cos n + a, n·sin n + b)/3 with a, b ~ U[0, 0.5], the second spiral its mirror through
/// the origin, then N(0, 0.1²) noise.
pub struct TwoSpirals;

const SPIRAL_NOISE: f64 = 0.1;

impl TwoSpirals {
    /// The first spiral's centre line (before the uniform offset) at `u` ([N]): [N, 2].
    fn curve(u: &Tensor) -> Tensor {
        let n = u.sqrt() * (3.0 * PI);
        Tensor::stack(&[-n.cos() * &n, n.sin() * &n], 1) / 3.0
    }

    /// log density of the first spiral at x ([B, 2]), by the midpoint rule over u: per
    /// dimension the offset is U[0, 1/6] plus N(0, σ²), whose density is
    /// 6·(Φ(y/σ) − Φ((y − 1/6)/σ)) at y = x − curve.
    fn log_prob_one(x: &Tensor) -> Tensor {
        let width = 0.5 / 3.0;
        let nodes = TwoSpirals::curve(&midpoints(CURVE_NODES)).to_kind(x.kind()).to_device(x.device());
        let y = (x.unsqueeze(1) - nodes.unsqueeze(0)) / SPIRAL_NOISE;
        let (a, b) = (y.shallow_clone(), y - width / SPIRAL_NOISE);
        // log(Φ(a) − Φ(b)) for a > b, from the side where both are small tails: Φ(a) − Φ(b) =
        // Φ(−b) − Φ(−a), so neither the difference nor the logarithm loses its digits.
        let flip = (&a + &b).gt(0.0);
        let (hi, lo) = ((-&b).where_self(&flip, &a), (-&a).where_self(&flip, &b));
        let (log_hi, log_lo) = (hi.special_log_ndtr(), lo.special_log_ndtr());
        let log_mass = &log_hi + (-(log_lo - &log_hi).exp()).log1p();
        (log_mass + (1.0 / width).ln()).sum_dim_intlist(2, false, x.kind()).logsumexp([1], false)
            - (CURVE_NODES as f64).ln()
    }
}

impl KnownDensity for TwoSpirals {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        let u = rng.uniform(&[n as i64], Kind::Double);
        let offset = rng.uniform(&[n as i64, 2], Kind::Double) * (0.5 / 3.0);
        let mirror = rng.uniform(&[n as i64, 1], Kind::Double).lt(0.5).to_kind(Kind::Double) * -2.0 + 1.0;
        let noise = rng.normal(&[n as i64, 2], Kind::Double) * SPIRAL_NOISE;
        (TwoSpirals::curve(&u) + offset) * mirror + noise
    }
    /// ½(p₁(x) + p₁(−x)), p₁ the first spiral's density.
    fn log_prob(&self, x: &Tensor) -> Tensor {
        let x = x.flatten(1, -1);
        Tensor::stack(&[TwoSpirals::log_prob_one(&x), TwoSpirals::log_prob_one(&(-&x))], 1).logsumexp([1], false)
            - 2f64.ln()
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

impl KnownDensity for Rings {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        ring_sample(&[0.6, 1.2, 1.8], 0.1, n, rng)
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        ring_log_prob(&[0.6, 1.2, 1.8], 0.1, x)
    }
}

/// The unit circle with a normal radial blur of std 0.05, the angle uniform: the CDL paper's
/// `circle`, whose code quantises the angle to a coarse grid and standardises the sample;
/// here the angle is continuous, so the density is exact.
pub struct Circle;

impl KnownDensity for Circle {
    fn shape(&self) -> Vec<i64> {
        vec![2]
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Tensor {
        ring_sample(&[1.0], 0.05, n, rng)
    }
    fn log_prob(&self, x: &Tensor) -> Tensor {
        ring_log_prob(&[1.0], 0.05, x)
    }
}

/// `n` points of equally weighted rings of these radii, each radius blurred by a normal of
/// std `std` truncated to r > 0, the angle uniform.
fn ring_sample(radii: &[f64], std: f64, n: usize, rng: &mut Rng) -> Tensor {
    let mut points = Vec::with_capacity(2 * n);
    while points.len() < 2 * n {
        let ring = radii[(rng.unit() * radii.len() as f64) as usize % radii.len()];
        let r = ring + std * rng.normal(&[1], Kind::Double).double_value(&[0]);
        if r > 0.0 {
            let angle = 2.0 * PI * rng.unit();
            points.extend([r * angle.cos(), r * angle.sin()]);
        }
    }
    Tensor::from_slice(&points).reshape([n as i64, 2])
}

/// The log-density of [`ring_sample`]'s law: p(x) = Σ_j N⁺(|x|; r_j, σ²)/(K·2π|x|).
fn ring_log_prob(radii: &[f64], std: f64, x: &Tensor) -> Tensor {
    let r = x.square().sum_dim_intlist(1, false, x.kind()).sqrt();
    let terms: Vec<Tensor> = radii
        .iter()
        .map(|&ring| {
            // log N(r; ring, σ²) - log Φ(ring/σ) (truncation to r > 0)
            let log_trunc = (0.5 * erfc(-ring / std / std::f64::consts::SQRT_2)).ln();
            (&r - ring).square() / (-2.0 * std * std) - (std * (2.0 * PI).sqrt()).ln() - log_trunc
        })
        .collect();
    Tensor::stack(&terms, 1).logsumexp([1], false) - (radii.len() as f64).ln() - (r * (2.0 * PI)).log()
}

/// erfc through libtorch (a scalar, so no extra crate is needed).
fn erfc(x: f64) -> f64 {
    Tensor::from(x).erfc().double_value(&[])
}
