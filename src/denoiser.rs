//! The denoising diffusion model (Ho et al. 2020, arXiv:2006.11239): a network ε̂(x_t, t) that
//! predicts the noise directly, trained with the simple MSE loss. The baseline a CDM is
//! compared against, on the same backbones.
use tch::{nn, Tensor};

use crate::base::GaussianBase;
use crate::input::{check_labels, check_levels, check_shape};
use crate::likelihood::reference::GaussianReference;
use crate::nets::{Backbone, Head};
use crate::network::NetworkConfig;
use crate::precision::Precision;
use crate::schedule::Schedule;
use crate::Result;

/// An ε-prediction network over the levels 1..=T.
pub struct Denoiser {
    backbone: Box<dyn Backbone>,
    schedule: Schedule,
    data_shape: Vec<i64>,
    /// Data labels the backbone is conditioned on (0: none; labels are then ignored).
    num_labels: usize,
    /// Noise prediction of a Gaussian fit, added to the network's.
    base: Option<GaussianBase>,
    /// What the backbone computes in (bf16: under autocast; ε̂ comes back in the input's kind).
    precision: Precision,
}

impl Denoiser {
    pub fn new(vs: &nn::Path, cfg: &NetworkConfig) -> Result<Self> {
        let schedule = Schedule::new(cfg.schedule)?;
        let backbone = cfg.backbone.build(vs, &cfg.data_shape, Head::Noise, schedule.timesteps())?;
        let base = cfg.base_components.map(|k| GaussianBase::new(vs, &cfg.data_shape, k));
        Ok(Denoiser {
            backbone,
            schedule,
            data_shape: cfg.data_shape.clone(),
            num_labels: cfg.backbone.num_labels(),
            base,
            precision: Precision::F32,
        })
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Data labels it is conditioned on (0: unconditional).
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn data_shape(&self) -> &[i64] {
        &self.data_shape
    }

    pub fn base(&self) -> Option<&GaussianBase> {
        self.base.as_ref()
    }

    /// Computes the backbone under bf16 autocast from now on ([`Precision::Bf16`]), or in the
    /// weights' own kind.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The Gaussian its I-MMSE likelihood is taken relative to: its base's per-dimension
    /// moments, or N(0, I).
    pub fn reference(&self) -> GaussianReference {
        match &self.base {
            Some(base) => base.diagonal(),
            None => GaussianReference::standard(self.data_shape.iter().product()),
        }
    }

    /// ε̂(x_t, t): [B, ..] for x_t: [B, ..], levels t: [B] in 0..=T+1 (Int64, or fractional:
    /// a float tensor, exact through [`Schedule::coefficients`]) and labels: [B] (Int64,
    /// 0..=L, L the null label).
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        check_shape(&self.data_shape, x_t)?;
        check_levels(t, x_t.size()[0], &self.schedule)?;
        check_labels(labels, x_t.size()[0], self.num_labels)?;
        self.eps_unchecked(x_t, t, labels, train)
    }

    /// [`Denoiser::eps`] without reading the levels and labels back to check their values
    /// (each read a host sync): for the training loss, which draws the levels itself and
    /// checks the labels once. The shape of `x_t` is still checked.
    pub(crate) fn eps_unchecked(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        check_shape(&self.data_shape, x_t)?;
        let eps = self.precision.autocast(x_t.device(), || self.backbone.forward(x_t, Some(t), labels, train))?;
        let eps = eps.to_kind(x_t.kind());
        Ok(match &self.base {
            Some(base) => eps + base.eps(x_t, t, labels, &self.schedule),
            None => eps,
        })
    }
}
