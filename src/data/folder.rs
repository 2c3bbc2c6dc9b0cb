//! Image folders (`folder:DIR[,size=N][,crop=celeba]`): every PNG and JPEG in a folder,
//! decoded on all cores, cropped and resized as asked, held as bytes, and cached decoded on
//! disk (keyed by the folder's path, its listing with sizes and modification times, and the
//! options), so that a second run over 200k CelebA JPEGs reads one file instead of decoding.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use sha1::{Digest, Sha1};
use tch::{Device, Kind, Tensor};

use super::images::{decode_image, square_crop, Images, MAX_FOLDER_SIZE};
use crate::{Error, Result};

/// How a folder's images are cut before resizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crop {
    /// The largest centred square (with `size`; without, the images keep their own size).
    Centre,
    /// CelebA's 64×64 baselines' face box: the 128×128 square at top 57, left 25 of the
    /// aligned 178×218 images (centre x 89, y 121), as in DDIM's official data code (Song et
    /// al. 2021, arXiv:2010.02502); resized to `size` (64 in the papers), else kept at 128.
    Celeba,
}

/// The size and crop of a folder's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// Side of the square the images are resized to; `None` keeps the crop's own size.
    pub size: Option<u32>,
    pub crop: Crop,
}

/// Images per unit of work of a decoding thread.
const CHUNK: usize = 64;

/// First bytes of a cache file; the version changes whenever its layout or the decoding does.
const MAGIC: &[u8; 8] = b"cdmfold1";

/// Reads every PNG and JPEG in `dir` (sorted by name) as RGB bytes [N, 3, H, W] (labels all
/// zero), cropped and resized as `options` ask; without a size, the images (or their crops)
/// must all have one size. With `cache`, the decoded array is kept there and read back while
/// the folder is unchanged.
pub fn read_folder(dir: &Path, options: FolderOptions, cache: Option<&Path>) -> Result<Images> {
    if let Some(s) = options.size.filter(|s| !(1..=MAX_FOLDER_SIZE).contains(s)) {
        return Err(Error::Data(format!("{}: size={s}; expected 1..={MAX_FOLDER_SIZE}", dir.display())));
    }
    let paths = image_paths(dir)?;
    let cached = match cache {
        Some(cache) => Some(cache.join(format!("{}.u8", cache_key(dir, &paths, options)?))),
        None => None,
    };
    if let Some(x) = cached.as_deref().and_then(read_cache) {
        let n = x.size()[0];
        return Ok(Images { x, labels: Tensor::zeros([n], (Kind::Int64, Device::Cpu)) });
    }
    let x = decode_all(dir, &paths, options)?;
    if let Some(path) = &cached {
        // The cache only saves time: a folder that cannot be written is no error.
        let _ = write_cache(path, &x);
    }
    let n = x.size()[0];
    Ok(Images { x, labels: Tensor::zeros([n], (Kind::Int64, Device::Cpu)) })
}

/// The cache file [`read_folder`] uses for `dir` with `options` under `cache`, as the folder
/// is now.
pub fn cache_file(dir: &Path, options: FolderOptions, cache: &Path) -> Result<PathBuf> {
    Ok(cache.join(format!("{}.u8", cache_key(dir, &image_paths(dir)?, options)?)))
}

/// The PNG and JPEG files of `dir`, sorted by name.
fn image_paths(dir: &Path) -> Result<Vec<PathBuf>> {
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
    Ok(paths)
}

/// SHA-1 of the folder's absolute path, every file's name, size and modification time, and
/// the options: any change to the folder gives another key.
fn cache_key(dir: &Path, paths: &[PathBuf], options: FolderOptions) -> Result<String> {
    let mut hash = Sha1::new();
    hash.update(MAGIC);
    let absolute = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    hash.update(absolute.as_os_str().as_encoded_bytes());
    hash.update(format!("{options:?}").as_bytes());
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        hash.update(path.file_name().map_or(&b""[..], |n| n.as_encoded_bytes()));
        hash.update(format!("|{}|{:?}\n", meta.len(), modified).as_bytes());
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// One image file decoded, cropped and resized as `options` ask.
fn load_image(path: &Path, options: FolderOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = decode_image(&bytes, path)?;
    Ok(match (options.crop, options.size) {
        (Crop::Centre, Some(size)) => square_crop(&img, size),
        (Crop::Centre, None) => img,
        (Crop::Celeba, size) => celeba_crop(&img, size.unwrap_or(128), path)?,
    })
}

/// The CelebA face box of an aligned 178×218 image (see [`Crop::Celeba`]), resized to
/// `size`×`size`.
pub fn celeba_crop(img: &RgbImage, size: u32, path: &Path) -> Result<RgbImage> {
    if img.dimensions() != (178, 218) {
        return Err(Error::Data(format!(
            "{}: crop=celeba is for CelebA's aligned 178×218 images, this one is {}×{}",
            path.display(),
            img.width(),
            img.height()
        )));
    }
    let crop = image::imageops::crop_imm(img, 25, 57, 128, 128).to_image();
    Ok(match size {
        128 => crop,
        _ => image::imageops::resize(&crop, size, size, image::imageops::FilterType::Triangle),
    })
}

/// Decodes `paths` on all cores into one byte tensor [N, 3, H, W], the size of the first
/// image's.
fn decode_all(dir: &Path, paths: &[PathBuf], options: FolderOptions) -> Result<Tensor> {
    let first = load_image(&paths[0], options)?;
    let (w, h) = first.dimensions();
    let per_image = 3 * (w * h) as usize;
    let x = Tensor::empty([paths.len() as i64, 3, h as i64, w as i64], (Kind::Uint8, Device::Cpu));
    let next = AtomicUsize::new(0);
    let chunks = paths.len().div_ceil(CHUNK);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(chunks);
    let (sender, receiver) = std::sync::mpsc::channel::<Result<(usize, Vec<u8>)>>();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..threads {
            let (sender, next) = (sender.clone(), &next);
            scope.spawn(move || loop {
                let chunk = next.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks {
                    break;
                }
                let start = chunk * CHUNK;
                let decoded = decode_chunk(dir, paths, start, (w, h), options);
                let failed = decoded.is_err();
                if sender.send(decoded.map(|bytes| (start, bytes))).is_err() || failed {
                    // Let the other threads stop early too.
                    next.store(chunks, Ordering::Relaxed);
                    break;
                }
            });
        }
        drop(sender);
        for message in receiver {
            let (start, bytes) = message.inspect_err(|_| next.store(chunks, Ordering::Relaxed))?;
            let rows = (bytes.len() / per_image) as i64;
            x.narrow(0, start as i64, rows).copy_(&Tensor::from_slice(&bytes).reshape([rows, 3, h as i64, w as i64]));
        }
        Ok(())
    })?;
    Ok(x)
}

/// Images `start..start + CHUNK` of `paths` as CHW bytes, each checked to be `size`.
fn decode_chunk(
    dir: &Path,
    paths: &[PathBuf],
    start: usize,
    size: (u32, u32),
    options: FolderOptions,
) -> Result<Vec<u8>> {
    let end = (start + CHUNK).min(paths.len());
    let mut bytes = Vec::with_capacity((end - start) * 3 * (size.0 * size.1) as usize);
    for path in &paths[start..end] {
        let img = load_image(path, options)?;
        if img.dimensions() != size {
            let (w, h) = img.dimensions();
            return Err(Error::Data(format!(
                "{}: images differ in size ({}: {}×{}, {}: {w}×{h}); add size=N to the spec to \
                 centre-crop and resize them all to N×N",
                dir.display(),
                paths[0].display(),
                size.0,
                size.1,
                path.display()
            )));
        }
        // HWC bytes to CHW.
        for c in 0..3 {
            bytes.extend(img.pixels().map(|p| p[c]));
        }
    }
    Ok(bytes)
}

/// Bytes read or written at once: the cache moves through this window, never a second copy
/// of the whole array.
const WINDOW: usize = 64 << 20;

/// The array in a cache file, or `None` when it is missing or not whole.
fn read_cache(path: &Path) -> Option<Tensor> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 40];
    file.read_exact(&mut header).ok()?;
    if &header[..8] != MAGIC {
        return None;
    }
    let dims: Vec<u64> =
        header[8..].chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())).collect();
    let per_image = dims[1..].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n > 0)?;
    let expected = dims[0].checked_mul(per_image)?.checked_add(40)?;
    if dims[0] == 0 || file.metadata().ok()?.len() != expected {
        return None;
    }
    // The file's length matches, so every dimension is below 2^63.
    let (per_image, dims) = (per_image as usize, dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
    let x = Tensor::empty(&dims[..], (Kind::Uint8, Device::Cpu));
    let rows_per_read = (WINDOW / per_image).max(1) as i64;
    let mut buffer = Vec::new();
    let mut start = 0;
    while start < dims[0] {
        let rows = rows_per_read.min(dims[0] - start);
        buffer.resize(rows as usize * per_image, 0);
        file.read_exact(&mut buffer).ok()?;
        x.narrow(0, start, rows).copy_(&Tensor::from_slice(&buffer).reshape([rows, dims[1], dims[2], dims[3]]));
        start += rows;
    }
    Some(x)
}

/// Writes `x` ([N, C, H, W], Uint8) to `path` whole or not at all: a temporary file, then a
/// rename.
fn write_cache(path: &Path, x: &Tensor) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&temp)?);
        file.write_all(MAGIC)?;
        for d in x.size() {
            file.write_all(&(d as u64).to_le_bytes())?;
        }
        let n = x.size()[0];
        let per_image = (x.numel() / n.max(1) as usize).max(1);
        let rows_per_write = (WINDOW / per_image).max(1) as i64;
        let mut start = 0;
        while start < n {
            let rows = rows_per_write.min(n - start);
            let bytes = Vec::<u8>::try_from(x.narrow(0, start, rows).contiguous().flatten(0, -1))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            file.write_all(&bytes)?;
            start += rows;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(path, e)
    })
}
