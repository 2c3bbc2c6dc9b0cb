//! An encoder-only convolutional classifier for images: residual blocks and downsampling, then
//! a head that sums over pixels. The CDM paper's open question (Yadin et al. 2024,
//! arXiv:2402.10095, section 6) is whether the encoder alone suffices, since the input gradient
//! already plays the decoder's part.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use super::blocks::{conv3, ResBlock};
use super::{
    check_fourier, check_range, check_stages, fourier_features, labels_or_null, Backbone, MAX_BLOCKS, MAX_LABELS,
};
use crate::{Error, Result};

/// Settings of [`ConvNet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvNetConfig {
    /// Channels of the first stage.
    pub channels: usize,
    /// Channel multiplier of each stage; every stage after the first halves the resolution.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per stage.
    pub blocks: usize,
    /// GroupNorm groups inside the residual blocks.
    pub groups: usize,
    /// Data labels to condition on (0: unconditional); label `num_labels` is the null label.
    pub num_labels: usize,
    /// Exponents of per-pixel Fourier features of the input (see [`fourier_features`]).
    pub fourier: Vec<i32>,
}

impl Default for ConvNetConfig {
    /// The tiny UNet's encoder ([`super::UnetConfig::tiny`]: 32 channels, ×1, 2, 2, one block
    /// per stage), so an encoder-only CDM and the UNet CDM differ by the decoder alone.
    fn default() -> Self {
        ConvNetConfig {
            channels: 32,
            channel_mult: vec![1, 2, 2],
            blocks: 1,
            groups: 8,
            num_labels: 0,
            fourier: Vec::new(),
        }
    }
}

impl ConvNetConfig {
    /// For the i.i.d. pixels of the uniform cubes (the paper's Fig. 3 at 3×32×32): one stage of
    /// 16 channels, small enough for two CPU cores.
    pub fn cube() -> Self {
        ConvNetConfig { channels: 16, channel_mult: vec![1], blocks: 1, groups: 4, num_labels: 0, fourier: Vec::new() }
    }

    /// Checks the sizes before anything is built, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        check_stages(self.channels, &self.channel_mult, self.groups)?;
        check_range("backbone.blocks", self.blocks, 1, MAX_BLOCKS)?;
        check_range("backbone.num_labels", self.num_labels, 0, MAX_LABELS)?;
        check_fourier(&self.fourier)
    }
}

/// Input conv → stages of residual blocks (strided conv between stages) → SiLU → conv(C → 2C)
/// → sum over pixels → linear to the classes. The pixel sum (the paper's head takes a mean)
/// keeps the output extensive, like a log-density, so its scale needs no learning.
pub struct ConvNet {
    input: nn::Conv2D,
    label_embed: Option<nn::Embedding>,
    null_label: i64,
    stages: Vec<(Vec<ResBlock>, Option<nn::Conv2D>)>,
    head_conv: nn::Conv2D,
    head: nn::Linear,
    fourier: Vec<i32>,
}

impl ConvNet {
    pub fn new(vs: &nn::Path, cfg: &ConvNetConfig, data_shape: &[i64], num_outputs: i64) -> Result<Self> {
        let [c_in, _, _] = data_shape else {
            return Err(Error::Config(format!("convnet needs data of shape [C, H, W], got {data_shape:?}")));
        };
        cfg.validate()?;
        let widths: Vec<i64> = cfg.channel_mult.iter().map(|m| (m * cfg.channels) as i64).collect();
        let label_dim = (cfg.num_labels > 0).then_some(4 * cfg.channels as i64);
        let mut c = widths[0];
        let mut stages = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let sv = vs / "stages" / i;
            let blocks = (0..cfg.blocks)
                .map(|j| {
                    let block = ResBlock::new(&(&sv / "blocks" / j), c, w, cfg.groups as i64, label_dim, 0.0);
                    c = w;
                    block
                })
                .collect();
            let down = (i + 1 < widths.len()).then(|| conv3(&sv / "down", c, c, 2));
            stages.push((blocks, down));
        }
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        Ok(ConvNet {
            input: conv3(vs / "input", c_in * (1 + 2 * cfg.fourier.len() as i64), widths[0], 1),
            label_embed: label_dim
                .map(|d| nn::embedding(vs / "label_embed", cfg.num_labels as i64 + 1, d, Default::default())),
            null_label: cfg.num_labels as i64,
            stages,
            head_conv: conv3(vs / "head_conv", c, 2 * c, 1),
            head: nn::linear(vs / "head", 2 * c, num_outputs, zero),
            fourier: cfg.fourier.clone(),
        })
    }
}

impl Backbone for ConvNet {
    fn forward(&self, x: &Tensor, _t: Option<&Tensor>, labels: Option<&Tensor>, train: bool) -> Tensor {
        let label = self
            .label_embed
            .as_ref()
            .map(|embed| embed.forward(&labels_or_null(labels, self.null_label, x.size()[0], x.device())).silu());
        let mut h = self.input.forward(&fourier_features(x, &self.fourier));
        for (blocks, down) in &self.stages {
            for block in blocks {
                h = block.forward(&h, label.as_ref(), train);
            }
            if let Some(down) = down {
                h = down.forward(&h);
            }
        }
        let pooled = self.head_conv.forward(&h.silu()).sum_dim_intlist([2, 3].as_slice(), false, h.kind());
        self.head.forward(&pooled)
    }
}
