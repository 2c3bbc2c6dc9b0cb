//! Layers the convolutional backbones share.
use tch::{nn, nn::Module, Kind, Tensor};

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

/// Single-head self-attention over pixels with a residual connection (DDPM's AttnBlock),
/// through libtorch's `scaled_dot_product_attention` (Vaswani et al. 2017, arXiv:1706.03762,
/// eq. 1): on a GPU a fused kernel (flash or memory-efficient) that never stores the
/// [HW, HW] weights. The fused kernels' backward passes are not differentiable again, so a
/// pass that must be (a CDM's training step: its loss holds an input gradient) takes the
/// formula as separate products and a softmax (in f32 under bf16 autocast). So does
/// the CPU, where the fused kernel was not shown to be faster (docs/results.md §11).
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

    /// x: [B, C, H, W]. `twice_differentiable`: the pass will be differentiated twice.
    pub(crate) fn forward(&self, x: &Tensor, twice_differentiable: bool) -> Tensor {
        self.attend(x, !twice_differentiable && x.device().is_cuda())
    }

    /// The attention through the fused kernel (`fused`) or the composite one.
    fn attend(&self, x: &Tensor, fused: bool) -> Tensor {
        let [b, c, h, w] = x.size()[..] else { return x.shallow_clone() };
        // [B, 3, C, HW] → q, k, v as [B, HW, C]: one head, a query per pixel.
        let qkv = self.qkv.forward(&self.norm.forward(x)).reshape([b, 3, c, h * w]).transpose(2, 3);
        let (q, k, v) = (qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2));
        let scale = 1.0 / (c as f64).sqrt();
        let out = if !fused {
            // The softmax in f32 whatever the products' kind: under bf16 autocast, libtorch's
            // composite kernel takes the softmax of bf16 scores, whose backward then meets an
            // f32 gradient in a CDM's second backward, which CUDA refuses.
            let scores = q.matmul(&k.transpose(1, 2)) * scale;
            let kind = scores.kind();
            let wide = if kind == Kind::Double { Kind::Double } else { Kind::Float };
            let weights = scores.to_kind(wide).softmax(-1, None).to_kind(kind);
            weights.matmul(&v)
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, scale, false)
        };
        x + self.proj.forward(&out.transpose(1, 2).reshape([b, c, h, w]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The attention as DDPM writes it: softmax(qᵀk/√C) applied to v, as separate products.
    fn by_products(a: &Attention, x: &Tensor) -> Tensor {
        let [b, c, h, w] = x.size()[..] else { unreachable!() };
        let qkv = a.qkv.forward(&a.norm.forward(x)).reshape([b, 3, c, h * w]);
        let (q, k, v) = (qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2));
        let weights = (q.transpose(1, 2).matmul(&k) / (c as f64).sqrt()).softmax(-1, x.kind());
        x + a.proj.forward(&v.matmul(&weights.transpose(1, 2)).reshape([b, c, h, w]))
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Values, input gradients (with their graph, as a CDM takes them) and the weights'
    /// gradients of a loss on those input gradients, in f64: both paths agree to rounding.
    #[test]
    fn fused_attention_is_the_products_and_differentiates_twice() {
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let a = Attention::new(&(vs.root() / "a"), 8, 4);
        vs.set_kind(Kind::Double);
        let x = Tensor::randn([2, 8, 4, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let probe = Tensor::randn([2, 8, 4, 5], (Kind::Double, Device::Cpu));
        let weights: Vec<Tensor> = vs.trainable_variables();
        let mut results = Vec::new();
        for path in 0..3 {
            let out = match path {
                0 => by_products(&a, &x),
                1 => a.attend(&x, false),
                _ => a.attend(&x, true),
            };
            let value = (&out * &probe).sum(Kind::Double);
            let grad_x = Tensor::run_backward(&[&value], &[&x], true, path < 2).remove(0);
            let second = if path < 2 {
                Tensor::run_backward(&[grad_x.square().sum(Kind::Double)], &weights, false, false)
            } else {
                Vec::new()
            };
            results.push((out.detach(), grad_x.detach(), second));
        }
        let (out, grad_x, second) = &results[0];
        for (i, (o, g, s)) in results.iter().enumerate().skip(1) {
            assert!(max_abs(o, out) < 1e-12, "path {i}: values differ by {}", max_abs(o, out));
            assert!(max_abs(g, grad_x) < 1e-12, "path {i}: input gradients differ by {}", max_abs(g, grad_x));
            // A weight the input gradient does not depend on (the output projection's bias)
            // has no second-order gradient on either path.
            for (w, w0) in s.iter().zip(second) {
                assert_eq!(w.defined(), w0.defined(), "path {i}: a second-order gradient is missing");
                if !w.defined() {
                    continue;
                }
                assert!(max_abs(w, w0) < 1e-10, "path {i}: second-order gradients differ by {}", max_abs(w, w0));
            }
        }
    }
}
