//! The two model kinds behind one type: a classification diffusion model (CDM) and the
//! denoising diffusion model (DDM) it is compared against. Training, sampling and the command
//! line go through [`Model`]; only likelihood needs the CDM itself.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::base::GaussianBase;
use crate::classifier::Classifier;
use crate::data::MAX_POINT_VALUES;
use crate::denoiser::Denoiser;
use crate::distributed::Shard;
use crate::input::check_shape;
use crate::loss::{cdm_loss, cdm_loss_given, ddm_loss, ddm_loss_given, Loss, LossDraw, LossWeights};
use crate::nets::BackboneConfig;
use crate::network::NetworkConfig;
use crate::precision::Precision;
use crate::rng::Rng;
use crate::schedule::{Schedule, ScheduleConfig};
use crate::{Error, Result};

/// Which kind of diffusion model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Noise-level classifier; ε̂ from its input gradient, likelihood from its logits.
    #[default]
    Cdm,
    /// ε-prediction network with the simple MSE loss.
    Ddm,
}

/// Everything needed to rebuild a model; stored as JSON beside its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// CDM or DDM (CDM when absent).
    #[serde(default)]
    pub kind: ModelKind,
    /// Noise levels.
    pub schedule: ScheduleConfig,
    /// The network.
    pub backbone: BackboneConfig,
    /// Shape of one data point, without the batch axis (`[D]` or `[C, H, W]`).
    pub data_shape: Vec<i64>,
    /// Add the exact outputs of a Gaussian fit of the data (mean and covariance) to the network's
    /// (see [`GaussianBase`]); off when absent.
    #[serde(default)]
    pub gaussian_base: bool,
    /// With `gaussian_base`, one Gaussian per class of a conditional model, the null label
    /// getting their mixture; off when absent.
    #[serde(default)]
    pub base_per_class: bool,
}

impl ModelConfig {
    /// Checks the whole config before a model is built from it (data shape, schedule,
    /// backbone, base), naming the first bad field; nothing large is allocated.
    pub fn validate(&self) -> Result<()> {
        let shape = &self.data_shape;
        let values = shape.iter().try_fold(1i64, |acc, &d| if d > 0 { acc.checked_mul(d) } else { None });
        if !(1..=4).contains(&shape.len()) || values.is_none_or(|n| n > MAX_POINT_VALUES) {
            return Err(Error::Config(format!(
                "model.data_shape is {shape:?}; expected 1 to 4 positive sizes of at most {MAX_POINT_VALUES} values in all"
            )));
        }
        Schedule::new(self.schedule)?;
        self.backbone.validate()?;
        // The base holds a D × D basis per component.
        let dim = values.unwrap_or(0);
        if self.base_components()?.is_some() && dim > MAX_BASE_DIM {
            return Err(Error::Config(format!(
                "model.gaussian_base needs a D × D covariance; D = {dim} is more than {MAX_BASE_DIM}"
            )));
        }
        Ok(())
    }

    /// What the classifier or denoiser of this config is built from.
    pub fn network(&self) -> Result<NetworkConfig> {
        Ok(NetworkConfig {
            schedule: self.schedule,
            backbone: self.backbone.clone(),
            data_shape: self.data_shape.clone(),
            base_components: self.base_components()?,
        })
    }

    /// How many Gaussians the base has: none without one, one per class with
    /// `base_per_class`, else one.
    pub fn base_components(&self) -> Result<Option<usize>> {
        let classes = self.backbone.num_labels();
        match (self.gaussian_base, self.base_per_class) {
            (false, false) => Ok(None),
            (false, true) => Err(Error::Config("base_per_class needs gaussian_base".into())),
            (true, true) if classes == 0 => {
                Err(Error::Config("base_per_class needs a conditional model (--conditional)".into()))
            }
            (true, true) => Ok(Some(classes)),
            (true, false) => Ok(Some(1)),
        }
    }
}

/// Largest data dimension D a Gaussian base may have (64×64 RGB is 12288).
pub const MAX_BASE_DIM: i64 = 16384;

/// A CDM or a DDM.
pub enum Model {
    Cdm(Classifier),
    Ddm(Denoiser),
}

impl Model {
    /// Builds the model under `vs` as `cfg` says.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(match cfg.kind {
            ModelKind::Cdm => Model::Cdm(Classifier::new(vs, &cfg.network()?)?),
            ModelKind::Ddm => Model::Ddm(Denoiser::new(vs, &cfg.network()?)?),
        })
    }

    pub fn schedule(&self) -> &Schedule {
        match self {
            Model::Cdm(m) => m.schedule(),
            Model::Ddm(m) => m.schedule(),
        }
    }

    /// Data labels it is conditioned on (0: unconditional).
    pub fn num_labels(&self) -> usize {
        match self {
            Model::Cdm(m) => m.num_labels(),
            Model::Ddm(m) => m.num_labels(),
        }
    }

    /// Shape of one data point.
    pub fn data_shape(&self) -> &[i64] {
        match self {
            Model::Cdm(m) => m.data_shape(),
            Model::Ddm(m) => m.data_shape(),
        }
    }

    /// Checks that `x` is a batch of data points of this model's shape.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        check_shape(self.data_shape(), x)
    }

    /// The Gaussian base, for a model built with one (a fresh run fits it to the data).
    pub fn base(&self) -> Option<&GaussianBase> {
        match self {
            Model::Cdm(m) => m.base(),
            Model::Ddm(m) => m.base(),
        }
    }

    /// Computes the network under bf16 autocast from now on ([`Precision::Bf16`]), or in the
    /// weights' own kind; the heads, losses and likelihood stay in the weights' kind.
    pub fn set_precision(&mut self, precision: Precision) {
        match self {
            Model::Cdm(m) => m.set_precision(precision),
            Model::Ddm(m) => m.set_precision(precision),
        }
    }

    /// The classifier, for what only a CDM can do (one-pass likelihood).
    pub fn classifier(&self) -> Result<&Classifier> {
        match self {
            Model::Cdm(m) => Ok(m),
            Model::Ddm(_) => Err(Error::Config("this needs a CDM; the model is a DDM".into())),
        }
    }

    /// ε̂(x_t, t) for levels t ([B], Int64), detached; works inside `no_grad`.
    pub fn eps(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Model::Cdm(m) => Ok(m.forward(x_t, t, labels, false)?.eps),
            // Without no_grad, a sampler's chain of steps would keep every step's graph.
            Model::Ddm(m) => tch::no_grad(|| m.eps(x_t, t, labels, false)),
        }
    }

    /// The training loss of `shard`'s rows `x0` ([shard.len, ..]) of a batch, as their share of
    /// the batch's loss (`Shard::whole` for a whole batch): the CDM loss (with the CE term
    /// weighted as `weights` say) or the DDM's simple MSE, with the contrastive diffusion loss
    /// if `weights.cdl` asks for it (a DDM only).
    pub fn loss(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        weights: &LossWeights,
        shard: Shard,
        rng: &mut Rng,
    ) -> Result<Loss> {
        match self {
            Model::Cdm(_) if weights.cdl.is_some() => {
                Err(Error::Config("the contrastive diffusion loss is for a DDM (--model ddm)".into()))
            }
            Model::Cdm(m) => cdm_loss(m, x0, labels, weights, shard, rng),
            Model::Ddm(m) => ddm_loss(m, x0, labels, weights, shard, rng),
        }
    }

    /// The random part of [`Model::loss`] (levels and noise, on `x0`'s device), for
    /// [`Model::loss_given`]. The contrastive diffusion loss draws its own and is not covered.
    pub fn draw_loss(&self, x0: &Tensor, weights: &LossWeights, shard: Shard, rng: &mut Rng) -> Result<LossDraw> {
        match self {
            Model::Cdm(m) => LossDraw::cdm(m, x0, weights, shard, rng),
            Model::Ddm(m) => LossDraw::ddm(m, x0, weights, shard, rng),
        }
    }

    /// [`Model::loss`] from drawn levels and noise, without the contrastive diffusion loss:
    /// device operations alone, which a CUDA graph can hold.
    pub fn loss_given(
        &self,
        x0: &Tensor,
        labels: Option<&Tensor>,
        draw: &LossDraw,
        weights: &LossWeights,
    ) -> Result<Loss> {
        match self {
            Model::Cdm(m) => cdm_loss_given(m, x0, labels, draw, weights),
            Model::Ddm(m) => ddm_loss_given(m, x0, labels, draw, weights),
        }
    }
}
