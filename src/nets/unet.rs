//! The DDPM UNet (Ho et al. 2020, arXiv:2006.11239, appendix B): residual blocks with GroupNorm
//! and SiLU, self-attention at chosen resolutions, skip connections from the encoder to the
//! decoder. As a DDM it reads t through a sinusoidal embedding and outputs ε̂; as a CDM its time
//! path is removed and the CDM paper's head (Yadin et al. 2024, section 5) reads out the levels:
//! GroupNorm → SiLU → conv(C → 2C) → mean over pixels → linear; or, with `head_channels` K,
//! a 1×1 conv to K channels and a SiLU before the mean (docs/results.md §4).
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use super::blocks::{conv3, Attention, ResBlock};
use super::{
    check_range, check_stages, labels_or_null, timestep_embedding, Backbone, Head, MAX_BLOCKS, MAX_LABELS, MAX_WIDTH,
};
use crate::{Error, Result};

/// Settings of [`Unet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnetConfig {
    /// Channels at full resolution.
    pub channels: usize,
    /// Channel multiplier per resolution; each after the first halves the resolution.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per resolution in the encoder (the decoder has one more).
    pub res_blocks: usize,
    /// Resolutions (image side in pixels) with self-attention.
    pub attention_resolutions: Vec<i64>,
    /// Dropout inside the residual blocks.
    pub dropout: f64,
    /// GroupNorm groups.
    pub groups: usize,
    /// Data labels to condition on (0: unconditional); label `num_labels` is the null label.
    pub num_labels: usize,
    /// A CDM's head. 0: the paper's, conv 3×3 (C → 2C) → mean → linear, whose logits are linear
    /// in about C pixel-averaged channels, so every level's denoiser combines the same few
    /// gradient fields. K > 0: conv 1×1 (C → K) → SiLU → mean → linear, K nonlinear features.
    pub head_channels: usize,
    /// Output channels of the paper's head convolution (0: 2C). The paper widens DDPM's last
    /// convolution to 512 channels for CIFAR-10 and 1024 for CelebA 64×64 (its appendix B.1).
    pub head_width: usize,
}

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig::tiny()
    }
}

impl UnetConfig {
    /// Trains on two CPU cores in minutes (28×28: about 1 M parameters).
    pub fn tiny() -> Self {
        UnetConfig {
            channels: 32,
            channel_mult: vec![1, 2, 2],
            res_blocks: 1,
            attention_resolutions: vec![],
            dropout: 0.0,
            groups: 8,
            num_labels: 0,
            head_channels: 0,
            head_width: 0,
        }
    }

    /// A mid-sized MNIST network (28×28: about 6 M parameters), attention at 14×14.
    pub fn mnist() -> Self {
        UnetConfig { channels: 64, res_blocks: 2, attention_resolutions: vec![14], dropout: 0.1, ..UnetConfig::tiny() }
    }

    /// The DDPM CIFAR-10 network (Ho et al. 2020, appendix B: ch 128, mult 1,2,2,2, two blocks,
    /// attention at 16×16, dropout 0.1), as the CDM paper uses it: a CDM's head convolution
    /// has 512 channels.
    pub fn cifar10() -> Self {
        UnetConfig {
            channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            res_blocks: 2,
            attention_resolutions: vec![16],
            dropout: 0.1,
            groups: 32,
            num_labels: 0,
            head_channels: 0,
            head_width: 512,
        }
    }

    /// The CelebA 64×64 network of DDIM's released model (ch 128, mult 1,2,2,2,4, two blocks,
    /// attention at 16×16, dropout 0.1), the CDM paper's baseline: a CDM's head convolution
    /// has 1024 channels.
    pub fn celeba64() -> Self {
        UnetConfig { channel_mult: vec![1, 2, 2, 2, 4], head_width: 1024, ..UnetConfig::cifar10() }
    }
}

impl UnetConfig {
    /// Checks the sizes before anything is built, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        check_stages(self.channels, &self.channel_mult, self.groups)?;
        if !self.channels.is_multiple_of(self.groups) {
            return Err(Error::Config(format!(
                "backbone.channels = {} is not divisible by backbone.groups = {}",
                self.channels, self.groups
            )));
        }
        check_range("backbone.res_blocks", self.res_blocks, 1, MAX_BLOCKS)?;
        check_range("backbone.num_labels", self.num_labels, 0, MAX_LABELS)?;
        check_range("backbone.head_channels", self.head_channels, 0, MAX_WIDTH)?;
        check_range("backbone.head_width", self.head_width, 0, MAX_WIDTH)?;
        if self.head_channels > 0 && self.head_width > 0 {
            return Err(Error::Config(
                "backbone.head_width widens the paper's head; it cannot go with head_channels (the nonlinear head)"
                    .into(),
            ));
        }
        if let Some(r) = self.attention_resolutions.iter().find(|&&r| r <= 0) {
            return Err(Error::Config(format!("backbone.attention_resolutions holds {r}; expected image sides > 0")));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "backbone.dropout is {}; expected a probability in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// One resolution of the encoder or decoder: residual blocks, each optionally followed by attention.
type Level = Vec<(ResBlock, Option<Attention>)>;

/// The UNet; see the module docs.
pub struct Unet {
    input: nn::Conv2D,
    time_embed: Option<(nn::Linear, nn::Linear, usize)>,
    label_embed: Option<nn::Embedding>,
    num_labels: i64,
    down: Vec<(Level, Option<nn::Conv2D>)>,
    middle: (ResBlock, Attention, ResBlock),
    up: Vec<(Level, Option<nn::Conv2D>)>,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
    levels_head: Option<nn::Linear>,
    nonlinear_head: bool,
}

/// Whether a pass of a backbone with this head is differentiated twice when training: a CDM's
/// loss holds its input gradient.
fn twice_differentiable(levels_head: bool, train: bool) -> bool {
    levels_head && train
}

impl Unet {
    pub fn new(vs: &nn::Path, cfg: &UnetConfig, data_shape: &[i64], head: Head, timesteps: usize) -> Result<Self> {
        let [c_in, height, width] = data_shape[..] else {
            return Err(Error::Config(format!("unet needs data of shape [C, H, W], got {data_shape:?}")));
        };
        cfg.validate()?;
        let stages = cfg.channel_mult.len();
        let scale = 1i64 << (stages - 1);
        if height % scale != 0 || width % scale != 0 {
            return Err(Error::Config(format!("unet: {height}×{width} images cannot be halved {} times", stages - 1)));
        }
        let widths: Vec<i64> = cfg.channel_mult.iter().map(|m| (m * cfg.channels) as i64).collect();
        let groups = cfg.groups as i64;
        let ch = cfg.channels as i64;
        let embed_dim = 4 * ch;
        let timed = head == Head::Noise;
        let has_embedding = timed || cfg.num_labels > 0;
        let emb = has_embedding.then_some(embed_dim);
        let block = |path: nn::Path, c_in: i64, c_out: i64| ResBlock::new(&path, c_in, c_out, groups, emb, cfg.dropout);
        let attention = |path: nn::Path, res: i64, c: i64| {
            cfg.attention_resolutions.contains(&res).then(|| Attention::new(&path, c, groups))
        };

        let mut skips = vec![ch];
        let (mut c, mut res) = (ch, height);
        let mut down = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let path = vs / "down" / i;
            let mut level = Vec::new();
            for j in 0..cfg.res_blocks {
                level.push((block(&path / "blocks" / j, c, w), attention(&path / "attention" / j, res, w)));
                c = w;
                skips.push(c);
            }
            let sample = (i + 1 < stages).then(|| conv3(&path / "downsample", c, c, 2));
            if sample.is_some() {
                skips.push(c);
                res /= 2;
            }
            down.push((level, sample));
        }
        let middle = (
            block(vs / "middle" / "block1", c, c),
            Attention::new(&(vs / "middle" / "attention"), c, groups),
            block(vs / "middle" / "block2", c, c),
        );
        let mut up = Vec::new();
        for (i, &w) in widths.iter().enumerate().rev() {
            let path = vs / "up" / i;
            let mut level = Vec::new();
            for j in 0..=cfg.res_blocks {
                let skip = skips.pop().unwrap_or(0);
                level.push((block(&path / "blocks" / j, c + skip, w), attention(&path / "attention" / j, res, w)));
                c = w;
            }
            let sample = (i > 0).then(|| conv3(&path / "upsample", c, c, 1));
            if sample.is_some() {
                res *= 2;
            }
            up.push((level, sample));
        }
        let zero_linear =
            nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let zero_conv = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let (out_conv, levels_head) = match head {
            Head::Noise => (nn::conv2d(vs / "out_conv", c, c_in, 3, zero_conv), None),
            Head::Levels(n) if cfg.head_channels == 0 => {
                let width = if cfg.head_width > 0 { cfg.head_width as i64 } else { 2 * c };
                (conv3(vs / "out_conv", c, width, 1), Some(nn::linear(vs / "levels_head", width, n, zero_linear)))
            }
            Head::Levels(n) => {
                let k = cfg.head_channels as i64;
                (
                    nn::conv2d(vs / "out_conv", c, k, 1, Default::default()),
                    Some(nn::linear(vs / "levels_head", k, n, zero_linear)),
                )
            }
        };
        Ok(Unet {
            input: conv3(vs / "input", c_in, ch, 1),
            time_embed: timed.then(|| {
                (
                    nn::linear(vs / "time_embed1", ch, embed_dim, Default::default()),
                    nn::linear(vs / "time_embed2", embed_dim, embed_dim, Default::default()),
                    timesteps,
                )
            }),
            label_embed: (cfg.num_labels > 0)
                .then(|| nn::embedding(vs / "label_embed", cfg.num_labels as i64 + 1, embed_dim, Default::default())),
            num_labels: cfg.num_labels as i64,
            down,
            middle,
            up,
            out_norm: nn::group_norm(vs / "out_norm", groups, c, Default::default()),
            out_conv,
            levels_head,
            nonlinear_head: cfg.head_channels > 0,
        })
    }
}

fn run_level(
    level: &Level,
    mut h: Tensor,
    emb: Option<&Tensor>,
    (train, twice): (bool, bool),
    skips: Option<&mut Vec<Tensor>>,
) -> (Tensor, Vec<Tensor>) {
    let mut outputs = Vec::new();
    let mut skips = skips;
    for (block, attention) in level {
        if let Some(skip) = skips.as_mut().and_then(|s| s.pop()) {
            h = Tensor::cat(&[&h, &skip], 1);
        }
        h = block.forward(&h, emb, train);
        if let Some(a) = attention {
            h = a.forward(&h, twice);
        }
        outputs.push(h.shallow_clone());
    }
    (h, outputs)
}

impl Backbone for Unet {
    fn forward(&self, x: &Tensor, t: Option<&Tensor>, labels: Option<&Tensor>, train: bool) -> Tensor {
        let batch = x.size()[0];
        let time = match (&self.time_embed, t) {
            (Some((l1, l2, timesteps)), Some(t)) => {
                Some(l2.forward(&l1.forward(&timestep_embedding(t, *timesteps, l1.ws.size()[1], x.kind())).silu()))
            }
            _ => None,
        };
        let label =
            self.label_embed.as_ref().map(|e| e.forward(&labels_or_null(labels, self.num_labels, batch, x.device())));
        let emb = match (time, label) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        }
        .map(|e| e.silu());
        let mode = (train, twice_differentiable(self.levels_head.is_some(), train));
        let mut h = self.input.forward(x);
        let mut skips = vec![h.shallow_clone()];
        for (level, sample) in &self.down {
            let (out, outputs) = run_level(level, h, emb.as_ref(), mode, None);
            skips.extend(outputs);
            h = out;
            if let Some(down) = sample {
                h = down.forward(&h);
                skips.push(h.shallow_clone());
            }
        }
        let (b1, attention, b2) = &self.middle;
        h = b2.forward(&attention.forward(&b1.forward(&h, emb.as_ref(), train), mode.1), emb.as_ref(), train);
        for (level, sample) in &self.up {
            h = run_level(level, h, emb.as_ref(), mode, Some(&mut skips)).0;
            if let Some(up) = sample {
                let size = h.size();
                h = up.forward(&h.upsample_nearest2d([size[2] * 2, size[3] * 2], None, None));
            }
        }
        let h = self.out_conv.forward(&self.out_norm.forward(&h).silu());
        match &self.levels_head {
            // Averaged over pixels, as in the paper's head: a sum (as the ConvNet takes) makes the
            // cumsum logits so sensitive to the head's weights that training at lr 1e-3 diverged
            // on MNIST (cross-entropy 119 after 100 steps).
            Some(head) => {
                let h = if self.nonlinear_head { h.silu() } else { h };
                head.forward(&h.mean_dim([2, 3].as_slice(), false, h.kind()))
            }
            None => h,
        }
    }
}
