//! An encoder-only convolutional classifier for images: residual blocks and downsampling, then
//! a head that sums over pixels. The CDM paper's open question (Yadin et al. 2024,
//! arXiv:2402.10095, section 6) is whether the encoder alone suffices, since the input gradient
//! already plays the decoder's part.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use super::Backbone;
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
}

impl Default for ConvNetConfig {
    fn default() -> Self {
        ConvNetConfig { channels: 32, channel_mult: vec![1, 2], blocks: 1, groups: 8, num_labels: 0 }
    }
}

impl ConvNetConfig {
    /// For the i.i.d. pixels of the uniform cubes (the paper's Fig. 3 at 3×32×32): one stage of
    /// 16 channels, small enough for two CPU cores.
    pub fn cube() -> Self {
        ConvNetConfig { channels: 16, channel_mult: vec![1], blocks: 1, groups: 4, num_labels: 0 }
    }
}

/// GN → SiLU → conv → (+ label) → GN → SiLU → conv, added to a (1×1-projected) skip.
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    label: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

fn conv3(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(vs, c_in, c_out, 3, nn::ConvConfig { padding: 1, stride, ..Default::default() })
}

impl ResBlock {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, groups: i64, label_dim: Option<i64>) -> Self {
        ResBlock {
            norm1: nn::group_norm(vs / "norm1", groups, c_in, Default::default()),
            conv1: conv3(vs / "conv1", c_in, c_out, 1),
            label: label_dim.map(|d| nn::linear(vs / "label", d, c_out, Default::default())),
            norm2: nn::group_norm(vs / "norm2", groups, c_out, Default::default()),
            conv2: conv3(vs / "conv2", c_out, c_out, 1),
            skip: (c_in != c_out).then(|| nn::conv2d(vs / "skip", c_in, c_out, 1, Default::default())),
        }
    }

    fn forward(&self, x: &Tensor, label: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(label)) = (&self.label, label) {
            h += proj.forward(label).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.skip {
            Some(skip) => skip.forward(x) + h,
            None => x + h,
        }
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
}

impl ConvNet {
    pub fn new(vs: &nn::Path, cfg: &ConvNetConfig, data_shape: &[i64], num_outputs: i64) -> Result<Self> {
        let [c_in, _, _] = data_shape else {
            return Err(Error::Config(format!("convnet needs data of shape [C, H, W], got {data_shape:?}")));
        };
        if cfg.channels == 0 || cfg.channel_mult.is_empty() || cfg.groups == 0 {
            return Err(Error::Config(
                "convnet: channels, channel_mult and groups must be non-empty and positive".into(),
            ));
        }
        let widths: Vec<i64> = cfg.channel_mult.iter().map(|m| (m * cfg.channels) as i64).collect();
        if let Some(w) = widths.iter().find(|&&w| w % cfg.groups as i64 != 0) {
            return Err(Error::Config(format!("convnet: width {w} is not divisible by groups = {}", cfg.groups)));
        }
        let label_dim = (cfg.num_labels > 0).then_some(4 * cfg.channels as i64);
        let mut c = widths[0];
        let mut stages = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let sv = vs / "stages" / i;
            let blocks = (0..cfg.blocks)
                .map(|j| {
                    let block = ResBlock::new(&(&sv / "blocks" / j), c, w, cfg.groups as i64, label_dim);
                    c = w;
                    block
                })
                .collect();
            let down = (i + 1 < widths.len()).then(|| conv3(&sv / "down", c, c, 2));
            stages.push((blocks, down));
        }
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        Ok(ConvNet {
            input: conv3(vs / "input", *c_in, widths[0], 1),
            label_embed: label_dim
                .map(|d| nn::embedding(vs / "label_embed", cfg.num_labels as i64 + 1, d, Default::default())),
            null_label: cfg.num_labels as i64,
            stages,
            head_conv: conv3(vs / "head_conv", c, 2 * c, 1),
            head: nn::linear(vs / "head", 2 * c, num_outputs, zero),
        })
    }
}

impl Backbone for ConvNet {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let label = self.label_embed.as_ref().map(|embed| {
            let null = || Tensor::full([x.size()[0]], self.null_label, (tch::Kind::Int64, x.device()));
            embed.forward(&labels.map_or_else(null, |l| l.shallow_clone())).silu()
        });
        let mut h = self.input.forward(x);
        for (blocks, down) in &self.stages {
            for block in blocks {
                h = block.forward(&h, label.as_ref());
            }
            if let Some(down) = down {
                h = down.forward(&h);
            }
        }
        let pooled = self.head_conv.forward(&h.silu()).sum_dim_intlist([2, 3].as_slice(), false, h.kind());
        self.head.forward(&pooled)
    }
}
