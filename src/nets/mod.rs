//! Backbones: networks that map a (noisy) input to one raw output per noise level. The
//! classifier's cumsum head (see `classifier`) turns these into logits, so any backbone that
//! implements [`Backbone`] becomes a classification diffusion model.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::Result;

pub mod convnet;
pub mod mlp;
pub use convnet::{ConvNet, ConvNetConfig};
pub use mlp::{Mlp, MlpConfig};

/// A network with one raw output per class, optionally conditioned on a data label.
pub trait Backbone: Send {
    /// Raw outputs h(x): [B, num_classes] for inputs x: [B, ..] and labels: [B] (Int64).
    /// `train` switches dropout and similar layers.
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;
}

/// Analytic backbones in tests and examples are plain closures of x.
impl<F: Fn(&Tensor) -> Tensor + Send> Backbone for F {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, _train: bool) -> Tensor {
        self(x)
    }
}

/// Which backbone a model uses, with its settings; stored in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackboneConfig {
    /// Residual MLP for vectors (any data shape, flattened).
    Mlp(MlpConfig),
    /// Encoder-only convolutional classifier for [C, H, W] data.
    ConvNet(ConvNetConfig),
}

impl BackboneConfig {
    /// Builds the backbone under `vs` for inputs of `data_shape` (without the batch axis) and
    /// `num_outputs` raw outputs.
    pub fn build(&self, vs: &nn::Path, data_shape: &[i64], num_outputs: i64) -> Result<Box<dyn Backbone>> {
        match self {
            BackboneConfig::Mlp(cfg) => Ok(Box::new(Mlp::new(vs, cfg, data_shape.iter().product(), num_outputs)?)),
            BackboneConfig::ConvNet(cfg) => Ok(Box::new(ConvNet::new(vs, cfg, data_shape, num_outputs)?)),
        }
    }

    /// Number of data labels the backbone is conditioned on (0: unconditional).
    pub fn num_labels(&self) -> usize {
        match self {
            BackboneConfig::Mlp(cfg) => cfg.num_labels,
            BackboneConfig::ConvNet(cfg) => cfg.num_labels,
        }
    }
}
