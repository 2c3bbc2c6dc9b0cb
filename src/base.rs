//! A Gaussian base for either model kind: a Gaussian fit of the training data (its mean and
//! covariance), or one per class, whose noisy levels have closed-form densities and MMSE
//! denoisers. A model with a base adds them to its network's outputs (the level log-densities
//! to a CDM's logits, the noise prediction to a DDM's), so the network learns only what the
//! Gaussians miss, and starts as their exact model. A time-free classifier gains most. At high
//! noise the posterior mean is nearly linear in x_t, so the Gaussian's (a smooth, blurred
//! digit on MNIST) is nearly right, where an input gradient learnt from scratch is still high
//! frequency noise; and without a base the gradient must grow like 1/σ_t² on pixels the data
//! never vary (an MNIST border), which it can only learn by telling the level from the image.
//! One Gaussian per class gives a conditional model its class's blurred shape at high noise,
//! and the null label their mixture, whose posterior mean already weighs the classes.
use std::cell::RefCell;

use tch::{nn, Kind, Tensor};

use crate::likelihood::reference::GaussianReference;
use crate::schedule::Schedule;
use crate::{Error, Result};

/// Variance added to every principal direction's: that of uniform dequantization noise on
/// 8-bit data scaled to [-1, 1], ((2/256)²/12). It keeps the level-0 density finite along
/// directions the data never vary in.
pub(crate) const VARIANCE_FLOOR: f64 = (2.0 / 256.0) * (2.0 / 256.0) / 12.0;

/// One fitted Gaussian N(μ, U diag(λ) Uᵀ), stored as untrained variables so checkpoints keep
/// it: μ [D], the principal directions U [D, D] (columns) and their variances λ [D].
struct Component {
    mean: Tensor,
    basis: Tensor,
    var: Tensor,
    /// What every forward pass derives from the three, kept until one of them changes.
    cache: RefCell<Option<Derived>>,
}

/// A component's statistics in f64, in the principal coordinates, and the terms of its level
/// log-densities: made after a fit or a load, not on every forward pass (the basis alone is a
/// D×D cast, the level terms 2·(T+2)·D values).
struct Derived {
    /// Which values of (mean, basis, var) it was made from: each one's storage and version
    /// counter, which every in-place write (a fit, a checkpoint load, an EMA copy) bumps.
    source: [(usize, i64); 3],
    /// U: [D, D].
    basis: Tensor,
    /// Uᵀμ: [1, D].
    mean: Tensor,
    /// λ: [1, D].
    var: Tensor,
    /// The level terms, for the schedule whose ᾱ table is kept beside them.
    levels: Option<(Vec<f64>, LevelTerms)>,
}

/// With m_t = √ᾱ_t·Uᵀμ and v_t = ᾱ_t·λ + 1 − ᾱ_t for every level t = 0..=T+1: 1/v_t and m_t/v_t
/// as [D, T+2] (transposed for the matrix products), and Σ_d (m_t²/v_t + ln 2πv_t) as [1, T+2].
struct LevelTerms {
    precision: Tensor,
    mean_precision: Tensor,
    constant: Tensor,
}

impl Component {
    /// N(0, I) until fitted.
    fn new(path: &nn::Path, d: i64) -> Self {
        let mean = path.zeros_no_train("mean", &[d]);
        let basis = path.var_copy("basis", &Tensor::eye(d, (Kind::Float, path.device())));
        let _ = basis.set_requires_grad(false);
        let var = path.ones_no_train("var", &[d]);
        Component { mean, basis, var, cache: RefCell::new(None) }
    }

    fn source(&self) -> [(usize, i64); 3] {
        [&self.mean, &self.basis, &self.var].map(|t| (t.data_ptr() as usize, t.internal_version()))
    }

    /// U, Uᵀμ and λ in f64, remade only when the variables have changed since.
    fn derived(&self) -> (Tensor, Tensor, Tensor) {
        let source = self.source();
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().is_none_or(|d| d.source != source) {
            *cache = Some(tch::no_grad(|| {
                let basis = self.basis.to_kind(Kind::Double);
                let mean = self.mean.to_kind(Kind::Double).unsqueeze(0).matmul(&basis);
                let var = self.var.to_kind(Kind::Double).unsqueeze(0);
                Derived { source, basis, mean, var, levels: None }
            }));
        }
        let d = cache.as_ref().expect("just made");
        (d.basis.shallow_clone(), d.mean.shallow_clone(), d.var.shallow_clone())
    }

    /// The level terms for `schedule`, remade only when the variables or the schedule change.
    fn level_terms(&self, schedule: &Schedule) -> LevelTerms {
        let (_, mean, var) = self.derived();
        let mut cache = self.cache.borrow_mut();
        let derived = cache.as_mut().expect("made by derived()");
        if derived.levels.as_ref().is_none_or(|(abar, _)| abar.as_slice() != schedule.alpha_bars()) {
            let terms = tch::no_grad(|| {
                let abar = Tensor::from_slice(schedule.alpha_bars()).to_device(mean.device()).unsqueeze(1);
                let (m, v) = (abar.sqrt() * mean, &abar * var - &abar + 1.0);
                let precision = v.reciprocal();
                let constant = (m.square() * &precision + (v * (2.0 * std::f64::consts::PI)).log())
                    .sum_dim_intlist(1, false, Kind::Double)
                    .unsqueeze(0);
                LevelTerms {
                    mean_precision: (m * &precision).tr().contiguous(),
                    precision: precision.tr().contiguous(),
                    constant,
                }
            });
            derived.levels = Some((schedule.alpha_bars().to_vec(), terms));
        }
        let (_, t) = derived.levels.as_ref().expect("just made");
        LevelTerms {
            precision: t.precision.shallow_clone(),
            mean_precision: t.mean_precision.shallow_clone(),
            constant: t.constant.shallow_clone(),
        }
    }

    /// Sets the mean and covariance from points `x` ([N, D], f64).
    fn fit(&self, x: &Tensor) {
        let mean = x.mean_dim(0, false, Kind::Double);
        let centred = x - &mean;
        let cov = centred.tr().matmul(&centred) / x.size()[0] as f64;
        let (var, basis) = cov.linalg_eigh("L");
        self.mean.shallow_clone().copy_(&mean);
        self.basis.shallow_clone().copy_(&basis);
        self.var.shallow_clone().copy_(&(var.clamp_min(0.0) + VARIANCE_FLOOR));
    }

    /// x ([B, ..]) in the principal coordinates, f64: [B, D].
    fn project(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Double).flatten(1, -1).matmul(&self.derived().0)
    }

    /// log N(x; √ᾱ_t·μ, ᾱ_t·Σ + (1 − ᾱ_t)·I) for every level: [B, T+2] in f64 (at t = 0 the
    /// terms of a never-varying direction reach 1e5 and cancel), by expanding the square into
    /// two matrix products.
    fn log_densities(&self, x: &Tensor, schedule: &Schedule) -> Tensor {
        let terms = self.level_terms(schedule);
        let z = self.project(x);
        let quadratic = z.square().matmul(&terms.precision) - 2.0 * z.matmul(&terms.mean_precision);
        (quadratic + terms.constant) * -0.5
    }

    /// At per-sample levels t ([B], integer or fractional: [`Schedule::alpha_bar_pair`]), f64:
    /// the MMSE noise prediction [B, D], σ_t·U·diag(1/(ᾱ_t·λ + σ_t²))·Uᵀ(x_t − √ᾱ_t·μ), and the
    /// log-density of x_t [B].
    fn eps_and_log_density(&self, x_t: &Tensor, t: &Tensor, schedule: &Schedule) -> (Tensor, Tensor) {
        let (abar, one_minus) = schedule.alpha_bar_pair(&t.to_device(x_t.device()));
        let (abar, one_minus) = (abar.unsqueeze(1), one_minus.unsqueeze(1));
        let (basis, mean, var) = self.derived();
        let m = abar.sqrt() * mean;
        let v = &abar * var + &one_minus;
        let centred = x_t.to_kind(Kind::Double).flatten(1, -1).matmul(&basis) - m;
        let log_density =
            (centred.square() / &v + (&v * (2.0 * std::f64::consts::PI)).log()).sum_dim_intlist(1, false, Kind::Double)
                * -0.5;
        let whitened = centred / v;
        (one_minus.sqrt() * whitened.matmul(&basis.tr()), log_density)
    }
}

/// One Gaussian, or one per class and their mixture.
pub struct GaussianBase {
    components: Vec<Component>,
    /// log π_c, the classes' frequencies: [K] (a variable when K > 1).
    log_weights: Tensor,
}

impl GaussianBase {
    /// `components` Gaussians (1, or one per class), N(0, I) until [`GaussianBase::fit`].
    pub fn new(vs: &nn::Path, data_shape: &[i64], components: usize) -> Self {
        let base = vs / "gaussian_base";
        let d: i64 = data_shape.iter().product();
        if components <= 1 {
            return GaussianBase {
                components: vec![Component::new(&base, d)],
                log_weights: Tensor::zeros([1], (Kind::Float, vs.device())),
            };
        }
        let k = components as i64;
        let log_weights =
            base.var_copy("log_weights", &Tensor::full([k], -(k as f64).ln(), (Kind::Float, vs.device())));
        let _ = log_weights.set_requires_grad(false);
        GaussianBase { components: (0..components).map(|c| Component::new(&(&base / c), d)).collect(), log_weights }
    }

    /// Fits to data points `x` ([N, ..]): one Gaussian to all, or class c's to the points with
    /// label c (`labels` [N]), weighted by their share.
    pub fn fit(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<()> {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Double).flatten(1, -1);
            if let [single] = &self.components[..] {
                single.fit(&x);
                return Ok(());
            }
            let labels = labels.ok_or_else(|| Error::Data("a per-class Gaussian base needs labelled data".into()))?;
            let mut shares = Vec::new();
            for (c, component) in self.components.iter().enumerate() {
                let rows = labels.eq(c as i64).nonzero().squeeze_dim(1);
                if rows.size()[0] == 0 {
                    return Err(Error::Data(format!("no points with label {c} to fit its Gaussian to")));
                }
                component.fit(&x.index_select(0, &rows.to_device(x.device())));
                shares.push(rows.size()[0] as f64 / x.size()[0] as f64);
            }
            self.log_weights.shallow_clone().copy_(&Tensor::from_slice(&shares).log());
            Ok(())
        })
    }

    /// Log-density of every level for x: [B, T+2], in x's kind. With a label c (`labels` [B],
    /// Int64), class c's Gaussian; with the null label (K) or none, the mixture.
    pub fn log_densities(&self, x: &Tensor, labels: Option<&Tensor>, schedule: &Schedule) -> Tensor {
        let per_class: Vec<Tensor> = self.components.iter().map(|c| c.log_densities(x, schedule)).collect();
        if per_class.len() == 1 {
            return per_class[0].to_kind(x.kind());
        }
        let stacked = Tensor::stack(&per_class, 1);
        let mixture = (&stacked + self.log_weights.to_kind(Kind::Double).view([1, -1, 1])).logsumexp([1], true);
        self.pick(&Tensor::cat(&[stacked, mixture], 1), labels).to_kind(x.kind())
    }

    /// The MMSE noise prediction at per-sample levels t ([B], integer or fractional), shaped
    /// like x_t: class
    /// c's for label c, and for the null label (or none) the mixture's, the classes' weighted by
    /// their posterior probabilities given x_t.
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>, schedule: &Schedule) -> Tensor {
        let (per_class, log_densities): (Vec<Tensor>, Vec<Tensor>) =
            self.components.iter().map(|c| c.eps_and_log_density(x_t, t, schedule)).unzip();
        let eps = if per_class.len() == 1 {
            per_class[0].shallow_clone()
        } else {
            let stacked = Tensor::stack(&per_class, 1);
            let log_joint = Tensor::stack(&log_densities, 1) + self.log_weights.to_kind(Kind::Double).unsqueeze(0);
            let posterior = log_joint.softmax(1, Kind::Double).unsqueeze(2);
            let mixture = (&stacked * posterior).sum_dim_intlist(1, true, Kind::Double);
            self.pick(&Tensor::cat(&[stacked, mixture], 1), labels)
        };
        eps.reshape(x_t.size()).to_kind(x_t.kind())
    }

    /// The per-dimension mean and variance of the base (of the class mixture for more than
    /// one Gaussian): the reference of a DDM's I-MMSE likelihood.
    pub fn diagonal(&self) -> GaussianReference {
        tch::no_grad(|| {
            let weights = self.log_weights.to_kind(Kind::Double).exp();
            let weights = &weights / weights.sum(Kind::Double);
            // [D] from the start: adding into a 0-dim tensor in place cannot broadcast.
            let zeros = || self.components[0].mean.zeros_like().to_kind(Kind::Double);
            let (mut mean, mut second) = (zeros(), zeros());
            for (c, component) in self.components.iter().enumerate() {
                let basis = component.basis.to_kind(Kind::Double);
                // diag(U diag(λ) Uᵀ)_i = Σ_k U_ik² λ_k
                let var = basis.square().matmul(&component.var.to_kind(Kind::Double));
                let mu = component.mean.to_kind(Kind::Double);
                let w = weights.get(c as i64);
                second += &w * (var + mu.square());
                mean += w * mu;
            }
            let var = (second - mean.square()).clamp_min(VARIANCE_FLOOR);
            GaussianReference { mean: mean.to_device(tch::Device::Cpu), var: var.to_device(tch::Device::Cpu) }
        })
    }

    /// Row `labels[b]` of each sample's [K+1, N] block of `rows` ([B, K+1, N]); row K, the
    /// mixture's, for the null label and without labels.
    fn pick(&self, rows: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let (batch, k) = (rows.size()[0], self.components.len() as i64);
        let index = labels.map_or_else(|| Tensor::full([batch], k, (Kind::Int64, rows.device())), |l| l.clamp(0, k));
        rows.gather(1, &index.view([-1, 1, 1]).expand([batch, 1, rows.size()[2]], false), false).squeeze_dim(1)
    }
}
