//! The classification diffusion model (Yadin, Elata, Michaeli, "Classification Diffusion
//! Models", 2024, arXiv:2402.10095): a backbone's raw outputs h(x) ∈ R^{T+2}, the cumsum head
//! l = cumsum(h) (each h_t a log-ratio of adjacent level densities), F(x, t) = l_{T+1}(x) - l_t(x),
//! and the MMSE denoiser from the input gradient of F (Theorem 3.1).
use tch::{nn, Kind, Tensor};

use crate::base::GaussianBase;
use crate::input::{check_labels, check_levels, check_shape};
use crate::nets::{Backbone, Head};
use crate::network::NetworkConfig;
use crate::precision::Precision;
use crate::schedule::Schedule;
use crate::Result;

/// A noise-level classifier over t = 0..=T+1.
pub struct Classifier {
    backbone: Box<dyn Backbone>,
    schedule: Schedule,
    data_shape: Vec<i64>,
    /// Data labels the backbone is conditioned on (0: none; labels are then ignored).
    num_labels: usize,
    /// Level log-densities of a Gaussian fit (or one per class), added to the logits.
    base: Option<GaussianBase>,
    /// What the backbone computes in (bf16: under autocast; the head and all after it in f32).
    precision: Precision,
}

/// What one pass with the input gradient gives.
pub struct ClassifierOutput {
    /// l(x_t): [B, T+2].
    pub logits: Tensor,
    /// ε̂(x_t, t) = √(1-ᾱ_t)·(∇_x F(x_t, t) + x_t): [B, ..] (Theorem 3.1).
    pub eps: Tensor,
}

impl Classifier {
    /// Builds the backbone under `vs` as `cfg` says.
    pub fn new(vs: &nn::Path, cfg: &NetworkConfig) -> Result<Self> {
        let schedule = Schedule::new(cfg.schedule)?;
        let head = Head::Levels(schedule.num_classes() as i64);
        let backbone = cfg.backbone.build(vs, &cfg.data_shape, head, schedule.timesteps())?;
        let base = cfg.base_components.map(|k| GaussianBase::new(vs, &cfg.data_shape, k));
        Ok(Classifier {
            backbone,
            schedule,
            data_shape: cfg.data_shape.clone(),
            num_labels: cfg.backbone.num_labels(),
            base,
            precision: Precision::F32,
        })
    }

    /// Wraps any backbone, an analytic one for instance.
    pub fn from_backbone(backbone: Box<dyn Backbone>, schedule: Schedule, data_shape: Vec<i64>) -> Self {
        Classifier { backbone, schedule, data_shape, num_labels: 0, base: None, precision: Precision::F32 }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Data labels it is conditioned on (0: unconditional).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn base(&self) -> Option<&GaussianBase> {
        self.base.as_ref()
    }

    /// Computes the backbone under bf16 autocast from now on ([`Precision::Bf16`]), or in the
    /// weights' own kind.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Shape of one data point.
    pub fn data_shape(&self) -> &[i64] {
        &self.data_shape
    }

    /// Checks that `x` is a batch of data points of this model's shape.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        check_shape(&self.data_shape, x)
    }

    /// Logits l(x) = cumsum(h(x)), plus the base's level log-densities: [B, T+2]. Labels:
    /// [B] (Int64, 0..=L, L the null label).
    pub fn logits(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        check_labels(labels, x.size()[0], self.num_labels)?;
        self.logits_unchecked(x, labels, train)
    }

    /// [`Classifier::logits`] without the checks of the labels' values, which read them back
    /// from the device (a host sync): for callers that drew or checked them already.
    fn logits_unchecked(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let h = self.precision.autocast(x.device(), || self.backbone.forward(x, None, labels, train))?;
        // The cumsum over T+2 levels and everything read from it need the input's precision:
        // in bf16 (8 bits of mantissa) the sum of a thousand terms loses whole nats.
        let logits = h.to_kind(x.kind()).cumsum(1, None::<Kind>);
        Ok(match &self.base {
            Some(base) => logits + base.log_densities(x, labels, &self.schedule),
            None => logits,
        })
    }

    /// One pass with the input gradient: logits and the denoiser ε̂ at per-sample levels `t`
    /// ([B], Int64). With `train`, the gradient keeps its graph (double backprop) so a loss on
    /// ε̂ reaches the weights; otherwise ε̂ and the logits come back detached. Works inside
    /// `no_grad`.
    pub fn forward(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<ClassifierOutput> {
        self.check_input(x_t)?;
        check_levels(t, x_t.size()[0], &self.schedule)?;
        check_labels(labels, x_t.size()[0], self.num_labels)?;
        self.forward_unchecked(x_t, t, labels, train)
    }

    /// [`Classifier::forward`] without reading the levels and labels back to check their
    /// values (each read a host sync): for the training loss, which draws the levels itself
    /// and checks the labels once. The shape of `x_t` is still checked.
    pub(crate) fn forward_unchecked(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<ClassifierOutput> {
        self.check_input(x_t)?;
        tch::with_grad(|| {
            let x = x_t.detach().set_requires_grad(true);
            let logits = self.logits_unchecked(&x, labels, train)?;
            let f = f_value(&logits, t);
            let grad = Tensor::f_run_backward(&[f.sum(f.kind())], &[&x], train, train)?.remove(0);
            let (_, sigma) = self.schedule.coefficients(t, &x);
            let eps = sigma * (grad + &x);
            Ok(if train {
                ClassifierOutput { logits, eps }
            } else {
                ClassifierOutput { logits: logits.detach(), eps: eps.detach() }
            })
        })
    }
}

/// F(x, t) = l_{T+1}(x) - l_t(x): [B] from logits [B, T+2] and levels t [B].
pub fn f_value(logits: &Tensor, t: &Tensor) -> Tensor {
    let last = logits.size()[1] - 1;
    logits.select(1, last) - logits.gather(1, &t.to_kind(Kind::Int64).unsqueeze(1), false).squeeze_dim(1)
}
