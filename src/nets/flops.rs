//! Floating-point operations of one forward pass of a backbone, counted from its shapes the way
//! PyTorch's `torch.utils.flop_counter` counts them: 2·(multiply-adds) of every convolution,
//! linear layer and attention product; normalisations, activations, additions and embedding
//! look-ups are not counted (they are memory-bound, and a small share of the arithmetic).
use super::{BackboneConfig, ConvNetConfig, Head, MlpConfig, UnetConfig};
use crate::{Error, Result};

/// A convolution from `c_in` to `c_out` channels with a k×k kernel, `pixels` output pixels.
fn conv(c_in: i64, c_out: i64, k: i64, pixels: i64) -> f64 {
    2.0 * (c_in * c_out * k * k * pixels) as f64
}

fn linear(d_in: i64, d_out: i64) -> f64 {
    2.0 * (d_in * d_out) as f64
}

/// The residual block of `blocks.rs`: two 3×3 convolutions, the embedding's projection, the
/// 1×1 skip when the width changes.
fn res_block(c_in: i64, c_out: i64, embed: Option<i64>, pixels: i64) -> f64 {
    conv(c_in, c_out, 3, pixels)
        + conv(c_out, c_out, 3, pixels)
        + embed.map_or(0.0, |e| linear(e, c_out))
        + if c_in == c_out { 0.0 } else { conv(c_in, c_out, 1, pixels) }
}

/// The attention of `blocks.rs`: q, k, v and the output projection (1×1), and the two
/// products over pixels, qᵀk and the weights applied to v.
fn attention(c: i64, pixels: i64) -> f64 {
    conv(c, 3 * c, 1, pixels) + conv(c, c, 1, pixels) + 2.0 * 2.0 * (pixels * pixels * c) as f64
}

impl BackboneConfig {
    /// FLOPs of one forward pass for one data point of `data_shape`, with `head`.
    pub fn forward_flops(&self, data_shape: &[i64], head: Head) -> Result<f64> {
        match self {
            BackboneConfig::Mlp(cfg) => Ok(mlp(cfg, data_shape, head)),
            BackboneConfig::ConvNet(cfg) => convnet(cfg, data_shape, head),
            BackboneConfig::Unet(cfg) => unet(cfg, data_shape, head),
        }
    }
}

fn mlp(cfg: &MlpConfig, data_shape: &[i64], head: Head) -> f64 {
    let dim: i64 = data_shape.iter().product();
    let hidden = cfg.hidden as i64;
    let features = dim * (1 + 2 * cfg.fourier.len() as i64);
    let (outputs, time) = match head {
        Head::Levels(n) => (n, 0.0),
        Head::Noise => (dim, linear(hidden, hidden)),
    };
    linear(features, hidden) + time + cfg.blocks as f64 * linear(hidden, hidden) + linear(hidden, outputs)
}

/// [C, H, W] of an image backbone's data.
fn image(data_shape: &[i64], what: &str) -> Result<(i64, i64, i64)> {
    match data_shape {
        &[c, h, w] => Ok((c, h, w)),
        _ => Err(Error::Config(format!("{what} needs data of shape [C, H, W], got {data_shape:?}"))),
    }
}

fn convnet(cfg: &ConvNetConfig, data_shape: &[i64], head: Head) -> Result<f64> {
    let (c_in, mut height, mut width) = image(data_shape, "convnet")?;
    let Head::Levels(outputs) = head else {
        return Err(Error::Config("convnet is an encoder: it can only be a CDM's classifier".into()));
    };
    let widths: Vec<i64> = cfg.channel_mult.iter().map(|m| (m * cfg.channels) as i64).collect();
    let label = (cfg.num_labels > 0).then_some(4 * cfg.channels as i64);
    let mut c = widths[0];
    let mut flops = conv(c_in * (1 + 2 * cfg.fourier.len() as i64), c, 3, height * width);
    for (i, &w) in widths.iter().enumerate() {
        for _ in 0..cfg.blocks {
            flops += res_block(c, w, label, height * width);
            c = w;
        }
        if i + 1 < widths.len() {
            // Stride 2, padding 1: ⌈side/2⌉ outputs.
            (height, width) = ((height + 1) / 2, (width + 1) / 2);
            flops += conv(c, c, 3, height * width);
        }
    }
    Ok(flops + conv(c, 2 * c, 3, height * width) + linear(2 * c, outputs))
}

fn unet(cfg: &UnetConfig, data_shape: &[i64], head: Head) -> Result<f64> {
    let (c_in, height, width) = image(data_shape, "unet")?;
    let ch = cfg.channels as i64;
    let widths: Vec<i64> = cfg.channel_mult.iter().map(|m| (m * cfg.channels) as i64).collect();
    let embed = (head == Head::Noise || cfg.num_labels > 0).then_some(4 * ch);
    // Pixels and side at stage i (each stage after the first halves the resolution).
    let pixels = |i: usize| (height >> i) * (width >> i);
    let attended = |i: usize| cfg.attention_resolutions.contains(&(height >> i));
    let mut flops = if head == Head::Noise { linear(ch, 4 * ch) + linear(4 * ch, 4 * ch) } else { 0.0 };
    flops += conv(c_in, ch, 3, pixels(0));
    let (mut skips, mut c) = (vec![ch], ch);
    for (i, &w) in widths.iter().enumerate() {
        for _ in 0..cfg.res_blocks {
            flops += res_block(c, w, embed, pixels(i));
            if attended(i) {
                flops += attention(w, pixels(i));
            }
            c = w;
            skips.push(c);
        }
        if i + 1 < widths.len() {
            flops += conv(c, c, 3, pixels(i + 1));
            skips.push(c);
        }
    }
    let last = widths.len() - 1;
    flops += 2.0 * res_block(c, c, embed, pixels(last)) + attention(c, pixels(last));
    for (i, &w) in widths.iter().enumerate().rev() {
        for _ in 0..=cfg.res_blocks {
            let skip = skips.pop().unwrap_or(0);
            flops += res_block(c + skip, w, embed, pixels(i));
            if attended(i) {
                flops += attention(w, pixels(i));
            }
            c = w;
        }
        if i > 0 {
            flops += conv(c, c, 3, pixels(i - 1));
        }
    }
    Ok(flops
        + match head {
            Head::Noise => conv(c, c_in, 3, pixels(0)),
            Head::Levels(n) if cfg.head_channels == 0 => {
                let width = if cfg.head_width > 0 { cfg.head_width as i64 } else { 2 * c };
                conv(c, width, 3, pixels(0)) + linear(width, n)
            }
            Head::Levels(n) => {
                let k = cfg.head_channels as i64;
                conv(c, k, 1, pixels(0)) + linear(k, n)
            }
        })
}
