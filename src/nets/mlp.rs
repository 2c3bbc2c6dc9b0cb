//! A residual MLP with SiLU for vector data (2-D densities, flattened cubes).
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use super::Backbone;
use crate::{Error, Result};

/// Settings of [`Mlp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Width of every hidden layer.
    pub hidden: usize,
    /// Number of residual blocks after the input layer.
    pub blocks: usize,
    /// Data labels to condition on (0: unconditional); label `num_labels` is the null label.
    pub num_labels: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig { hidden: 256, blocks: 3, num_labels: 0 }
    }
}

impl MlpConfig {
    /// For 2-D toy densities: small enough to train in a minute on two CPU cores.
    pub fn toy_2d() -> Self {
        MlpConfig { hidden: 128, blocks: 3, num_labels: 0 }
    }
}

/// x → SiLU(W x + label embedding) → `blocks` × (h + SiLU(W h)) → head, with the head
/// initialised at zero so an untrained classifier says p_t = N(0, I) at every level.
pub struct Mlp {
    input: nn::Linear,
    label_embed: Option<nn::Embedding>,
    null_label: i64,
    blocks: Vec<nn::Linear>,
    head: nn::Linear,
}

impl Mlp {
    pub fn new(vs: &nn::Path, cfg: &MlpConfig, in_dim: i64, num_outputs: i64) -> Result<Self> {
        if cfg.hidden == 0 {
            return Err(Error::Config("mlp.hidden must be positive".into()));
        }
        let hidden = cfg.hidden as i64;
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        Ok(Mlp {
            input: nn::linear(vs / "input", in_dim, hidden, Default::default()),
            label_embed: (cfg.num_labels > 0)
                .then(|| nn::embedding(vs / "label_embed", cfg.num_labels as i64 + 1, hidden, Default::default())),
            null_label: cfg.num_labels as i64,
            blocks: (0..cfg.blocks)
                .map(|i| nn::linear(vs / "blocks" / i, hidden, hidden, Default::default()))
                .collect(),
            head: nn::linear(vs / "head", hidden, num_outputs, zero),
        })
    }
}

impl Backbone for Mlp {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let mut h = self.input.forward(&x.flatten(1, -1));
        if let Some(embed) = &self.label_embed {
            let null = || Tensor::full([x.size()[0]], self.null_label, (tch::Kind::Int64, x.device()));
            h += embed.forward(&labels.map_or_else(null, |l| l.shallow_clone()));
        }
        h = h.silu();
        for block in &self.blocks {
            h = &h + block.forward(&h).silu();
        }
        self.head.forward(&h)
    }
}
