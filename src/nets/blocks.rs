//! Layers the convolutional backbones share.
use tch::{nn, nn::Module, Tensor};

pub(crate) fn conv3(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(vs, c_in, c_out, 3, nn::ConvConfig { padding: 1, stride, ..Default::default() })
}

/// GN → SiLU → conv → (+ embedding as a per-channel bias) → GN → SiLU → dropout → conv, added
/// to a (1×1-projected) skip: the residual block of the DDPM UNet.
pub(crate) struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    embed: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResBlock {
    /// `embed_dim`: width of the time/label embedding, if the block receives one.
    pub(crate) fn new(vs: &nn::Path, c_in: i64, c_out: i64, groups: i64, embed_dim: Option<i64>, dropout: f64) -> Self {
        ResBlock {
            norm1: nn::group_norm(vs / "norm1", groups, c_in, Default::default()),
            conv1: conv3(vs / "conv1", c_in, c_out, 1),
            embed: embed_dim.map(|d| nn::linear(vs / "embed", d, c_out, Default::default())),
            norm2: nn::group_norm(vs / "norm2", groups, c_out, Default::default()),
            conv2: conv3(vs / "conv2", c_out, c_out, 1),
            skip: (c_in != c_out).then(|| nn::conv2d(vs / "skip", c_in, c_out, 1, Default::default())),
            dropout,
        }
    }

    /// `embedding`: [B, embed_dim], already passed through SiLU.
    pub(crate) fn forward(&self, x: &Tensor, embedding: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(e)) = (&self.embed, embedding) {
            h += proj.forward(e).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu().dropout(self.dropout, train));
        match &self.skip {
            Some(skip) => skip.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over pixels with a residual connection (DDPM's AttnBlock).
pub(crate) struct Attention {
    norm: nn::GroupNorm,
    qkv: nn::Conv2D,
    proj: nn::Conv2D,
}

impl Attention {
    pub(crate) fn new(vs: &nn::Path, channels: i64, groups: i64) -> Self {
        Attention {
            norm: nn::group_norm(vs / "norm", groups, channels, Default::default()),
            qkv: nn::conv2d(vs / "qkv", channels, 3 * channels, 1, Default::default()),
            proj: nn::conv2d(vs / "proj", channels, channels, 1, Default::default()),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let [b, c, h, w] = x.size()[..] else { return x.shallow_clone() };
        let qkv = self.qkv.forward(&self.norm.forward(x)).reshape([b, 3, c, h * w]);
        let (q, k, v) = (qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2));
        let weights = (q.transpose(1, 2).matmul(&k) / (c as f64).sqrt()).softmax(-1, x.kind());
        let out = v.matmul(&weights.transpose(1, 2)).reshape([b, c, h, w]);
        x + self.proj.forward(&out)
    }
}
