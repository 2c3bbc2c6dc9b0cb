//! Training and evaluation data: `.npy` files, image sets (held as bytes) and built-in known
//! densities, named by a spec string (see [`Dataset::open`]); [`loader`] prepares training
//! batches from them off the training thread.
use std::path::PathBuf;

use tch::{Kind, Tensor};

use crate::distributed::Shard;
use crate::rng::Rng;
use crate::{Error, Result};

pub mod cifar10;
pub mod folder;
pub mod images;
pub mod known;
pub mod loader;
pub mod npy;

pub use folder::{Crop, FolderOptions};
pub use images::{ImageSet, Split};
pub use known::{Checkerboard, Circle, GaussianMixture, KnownDensity, Moons, Rings, TwoSpirals, UniformCube};

/// Specs accepted by [`Dataset::open`], for help texts and error messages.
pub const DATA_SPECS: &str = "npy:PATH | mnist[:split=test] | fashion-mnist[:split=test] | digits | \
cifar10[:split=test] (fetched) | cifar10:DIR[,split=test] (official binary batches) | \
folder:DIR[,size=N][,crop=celeba] (own size; size=N crops the centre square and resizes to N×N; \
crop=celeba cuts CelebA's 128×128 face box first) | \
uniform:d=D,g=WIDTH (d may be a shape like 3x32x32) | gmm2d | gmm:d=D,k=K,seed=S | checkerboard | rings | \
moons | two-spirals | eight-gaussians | circle | two-modes";

/// Most values one point of a built-in density may have (3×1024×1024 fits): the spec is
/// refused beyond it, before a batch of such points is allocated.
pub const MAX_POINT_VALUES: i64 = 1 << 22;

/// Most values a command holds for its points at once: 2^30, 8 GiB in f64. A count that would
/// pass it is refused up front, with a message, instead of failing to allocate.
pub const MAX_HELD_VALUES: u64 = 1 << 30;

/// Checks that `n` points of shape `point_shape` stay within [`MAX_HELD_VALUES`]; `what` (a
/// flag, say) names the count in the error.
pub fn check_held(what: &str, n: usize, point_shape: &[i64]) -> Result<()> {
    let per_point = point_shape.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
    match per_point.and_then(|d| d.checked_mul(n as u64)) {
        Some(values) if values <= MAX_HELD_VALUES => Ok(()),
        _ => Err(Error::Config(format!(
            "{what} {n}: {n} points of shape {point_shape:?} are more than the {MAX_HELD_VALUES} values (8 GiB in f64) a command holds at once"
        ))),
    }
}

/// The test-split spec of a training data spec (`mnist` → `mnist:split=test`), for the image
/// sets that have one; `None` for data without a test split.
pub fn test_split(spec: &str) -> Option<String> {
    let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
    if !matches!(name, "mnist" | "fashion-mnist" | "cifar10") {
        return None;
    }
    Some(match args {
        "" => format!("{name}:split=test"),
        _ if args.contains("split=") => spec.replace("split=train", "split=test"),
        _ => format!("{spec},split=test"),
    })
}

/// 8-bit pixels (Uint8, 0..=255) as points in [-1, 1], k/127.5 − 1, in `kind` and on the
/// pixels' device.
pub fn pixels_to_unit(pixels: &Tensor, kind: Kind) -> Tensor {
    pixels.to_kind(kind) / 127.5 - 1.0
}

/// Where training and evaluation points come from.
pub enum Dataset {
    /// A fixed set of points [N, ..] (Double), with data labels [N] where the source has them.
    Points { x: Tensor, labels: Option<Tensor> },
    /// A fixed set of 8-bit images [N, C, H, W] held as their bytes (Uint8; pixel k stands
    /// for k/127.5 − 1, see [`pixels_to_unit`]), an eighth of the memory of Double points;
    /// batches are converted as they are drawn.
    Images { pixels: Tensor, labels: Option<Tensor> },
    /// Fresh samples from a known density, with its exact log-density.
    Known(Box<dyn KnownDensity>),
}

impl Dataset {
    /// Opens a data spec: `npy:PATH`, `uniform:d=3x32x32,g=0.5`, `gmm2d`,
    /// `gmm:d=16,k=4,seed=0`, `checkerboard` or `rings`.
    pub fn open(spec: &str) -> Result<Self> {
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        if (name == "npy" || name == "folder") && args.split(',').next().is_none_or(str::is_empty) {
            let what =
                if name == "npy" { "npy:PATH (a .npy file)" } else { "folder:DIR[,size=N] (a folder of images)" };
            return Err(Error::Data(format!("'{spec}' names no file or folder: expected {what}")));
        }
        if name == "npy" {
            return Ok(Dataset::Points { x: npy::read_npy(&PathBuf::from(args))?, labels: None });
        }
        if name == "cifar10" || name == "folder" {
            // The directory comes first (cifar10 without one is fetched); options follow.
            let (dir, options) = match args.split_once(',').unwrap_or((args, "")) {
                (first, _) if name == "cifar10" && (first.is_empty() || first.contains('=')) => ("", args),
                pair => pair,
            };
            let options = SpecArgs::parse(spec, options)?;
            let images = if name == "cifar10" {
                let split = split_of(spec, &options)?;
                options.check_all_used()?;
                let dir = if dir.is_empty() { cifar10::fetch()? } else { PathBuf::from(dir) };
                images::read_cifar10(&dir, split)?
            } else {
                let size = match options.raw("size") {
                    None => None,
                    Some(_) => Some(options.int("size")?.min(u32::MAX as u64) as u32),
                };
                let crop = match options.raw("crop").unwrap_or("centre") {
                    "centre" | "center" => Crop::Centre,
                    "celeba" => Crop::Celeba,
                    other => return Err(Error::Data(format!("{spec}: crop={other}; expected centre or celeba"))),
                };
                options.check_all_used()?;
                // Without a cache folder (no HOME), the images are decoded every time.
                let cache = crate::cache::root().ok().map(|root| root.join("data/folders"));
                folder::read_folder(&PathBuf::from(dir), FolderOptions { size, crop }, cache.as_deref())?
            };
            return Ok(Dataset::from_images(images, name == "cifar10"));
        }
        let args = SpecArgs::parse(spec, args)?;
        let image_set = match name {
            "mnist" => Some(ImageSet::Mnist),
            "fashion-mnist" => Some(ImageSet::FashionMnist),
            "digits" => Some(ImageSet::Digits),
            _ => None,
        };
        if let Some(set) = image_set {
            let split = split_of(spec, &args)?;
            args.check_all_used()?;
            return Ok(Dataset::from_images(images::load(set, split)?, true));
        }
        let density: Box<dyn KnownDensity> = match name {
            "uniform" => {
                let shape = args.shape("d")?;
                let width = args.float("g")?;
                if !(width > 0.0 && width.is_finite()) {
                    return Err(Error::Data(format!("{spec}: g must be a positive width, got {width}")));
                }
                Box::new(UniformCube { shape, width })
            }
            "gmm2d" => Box::new(GaussianMixture::circle_2d()),
            "gmm" => {
                let dim = args.shape("d")?.iter().product::<i64>() as usize;
                let k = args.int("k")?;
                // The means are k × d values, allocated here.
                if k.saturating_mul(dim as u64) > MAX_POINT_VALUES as u64 {
                    return Err(Error::Data(format!(
                        "{spec}: k × d = {k} × {dim} means is more than {MAX_POINT_VALUES} values"
                    )));
                }
                Box::new(GaussianMixture::random(dim, k as usize, args.int_or("seed", 0)?))
            }
            "checkerboard" => Box::new(Checkerboard),
            "rings" => Box::new(Rings),
            "moons" => Box::new(Moons),
            "two-spirals" => Box::new(TwoSpirals),
            "eight-gaussians" => Box::new(GaussianMixture::eight_gaussians()),
            "circle" => Box::new(Circle),
            "two-modes" => Box::new(GaussianMixture::two_modes()),
            _ => return Err(Error::Data(format!("unknown data spec '{spec}'; expected one of: {DATA_SPECS}"))),
        };
        args.check_all_used()?;
        Ok(Dataset::Known(density))
    }

    /// A loaded image set: bytes as [`Dataset::Images`], Double values (the 8×8 digits) as
    /// [`Dataset::Points`]; with their labels when `labelled`.
    pub fn from_images(images: images::Images, labelled: bool) -> Self {
        let labels = labelled.then_some(images.labels);
        match images.x.kind() {
            Kind::Uint8 => Dataset::Images { pixels: images.x, labels },
            _ => Dataset::Points { x: images.x, labels },
        }
    }

    /// The same data for another thread: shallow copies of a fixed set's tensors (no bytes
    /// copied); `None` for a known density, which stays with its owner.
    pub fn shared(&self) -> Option<Dataset> {
        let labels = self.labels().map(Tensor::shallow_clone);
        match self {
            Dataset::Points { x, .. } => Some(Dataset::Points { x: x.shallow_clone(), labels }),
            Dataset::Images { pixels, .. } => Some(Dataset::Images { pixels: pixels.shallow_clone(), labels }),
            Dataset::Known(_) => None,
        }
    }

    /// Whether the data are 8-bit images (see [`is_8bit`]): always for an image set held as
    /// bytes, checked value by value for points.
    pub fn is_8bit(&self) -> bool {
        match self {
            Dataset::Images { .. } => true,
            Dataset::Points { x, .. } => is_8bit(x),
            Dataset::Known(_) => false,
        }
    }

    /// One line on what [`Dataset::open`] made of `spec`, for a command to show, e.g.
    /// "64 images of 3×8×8 at their own size".
    pub fn describe(&self, spec: &str) -> String {
        let shape = self.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×");
        match self {
            Dataset::Known(_) => format!("fresh samples of {shape} from a density known exactly"),
            Dataset::Points { x, labels } | Dataset::Images { pixels: x, labels } => {
                let n = x.size()[0];
                let labelled = labels.as_ref().map_or(String::new(), |_| {
                    format!(", labels 0..={}", self.num_labels().unwrap_or(1).saturating_sub(1))
                });
                let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
                let how = match name {
                    "folder" if args.contains("crop=celeba") => ", CelebA's face box cropped and resized as asked",
                    "folder" if args.contains(",size=") => ", centre-cropped to a square and resized as size= asks",
                    "folder" => " at their own size",
                    _ => "",
                };
                let what = if x.dim() == 4 { "images" } else { "points" };
                format!("{n} {what} of {shape}{how}{labelled}")
            }
        }
    }

    /// Shape of one data point.
    pub fn shape(&self) -> Vec<i64> {
        match self {
            Dataset::Points { x, .. } | Dataset::Images { pixels: x, .. } => x.size()[1..].to_vec(),
            Dataset::Known(d) => d.shape(),
        }
    }

    /// `shard`'s rows of a training batch as held: random rows of a fixed set (with replacement;
    /// Uint8 pixels for [`Dataset::Images`]) and their labels if it has any, or fresh samples.
    /// The whole batch's draws are made, so a row is the same whichever shard asks for it.
    pub fn batch(&self, shard: Shard, rng: &mut Rng) -> (Tensor, Option<Tensor>) {
        match self {
            Dataset::Points { x, labels } | Dataset::Images { pixels: x, labels } => {
                let rows = shard.rows(&rng.integers(shard.total, x.size()[0] as usize));
                (x.index_select(0, &rows), labels.as_ref().map(|l| l.index_select(0, &rows)))
            }
            Dataset::Known(d) => (shard.rows(&d.sample(shard.total, rng)), None),
        }
    }

    /// Number of distinct data labels (largest label + 1), for labelled data.
    pub fn num_labels(&self) -> Option<usize> {
        match self {
            Dataset::Points { labels: Some(l), .. } | Dataset::Images { labels: Some(l), .. } => {
                Some(l.max().int64_value(&[]) as usize + 1)
            }
            _ => None,
        }
    }

    /// The labels of [`Dataset::eval_points`], for a labelled dataset on disk.
    pub fn labels(&self) -> Option<&Tensor> {
        match self {
            Dataset::Points { labels, .. } | Dataset::Images { labels, .. } => labels.as_ref(),
            Dataset::Known(_) => None,
        }
    }

    /// Points to evaluate on (Double): every row of a fixed set (an image set's bytes
    /// converted, 8 bytes a value while the result lives), or `n` samples drawn with `seed`
    /// (use a seed other than the training seed for held-out points).
    pub fn eval_points(&self, n: usize, seed: u64) -> Tensor {
        match self {
            Dataset::Points { x, .. } => x.shallow_clone(),
            Dataset::Images { pixels, .. } => pixels_to_unit(pixels, Kind::Double),
            Dataset::Known(d) => d.sample(n, &mut Rng::stream(seed, u64::MAX)),
        }
    }

    /// The first `n` of [`Dataset::eval_points`] (fewer if a fixed set has fewer rows): of an
    /// image set, only those rows are converted, so a command that scores 10 000 images of a
    /// 200 000-image set holds no Double copy of the rest.
    pub fn first_points(&self, n: usize, seed: u64) -> Tensor {
        let first = |x: &Tensor| x.narrow(0, 0, i64::try_from(n).unwrap_or(i64::MAX).min(x.size()[0]));
        match self {
            Dataset::Images { pixels, .. } => pixels_to_unit(&first(pixels), Kind::Double),
            _ => first(&self.eval_points(n, seed)),
        }
    }

    /// The exact density, for built-in data.
    pub fn density(&self) -> Option<&dyn KnownDensity> {
        match self {
            Dataset::Points { .. } | Dataset::Images { .. } => None,
            Dataset::Known(d) => Some(d.as_ref()),
        }
    }
}

/// Whether `x` ([N, C, H, W]) holds 8-bit images as this crate stores them, every value
/// k/127.5 − 1 for an integer k in 0..=255: the data whose likelihood is reported in bits/dim
/// of the discrete pixels.
pub fn is_8bit(x: &Tensor) -> bool {
    if x.dim() != 4 || x.numel() == 0 {
        return false;
    }
    let k = (x.to_kind(Kind::Double) + 1.0) * 127.5;
    let on_grid = (&k - k.round()).abs().le(1e-6).all().int64_value(&[]) != 0;
    on_grid && k.min().double_value(&[]) > -0.5 && k.max().double_value(&[]) < 255.5
}

/// The `split=train|test` option (train when absent).
fn split_of(spec: &str, args: &SpecArgs) -> Result<Split> {
    match args.raw("split").unwrap_or("train") {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => Err(Error::Data(format!("{spec}: split={other}; expected train or test"))),
    }
}

/// `key=value` pairs of a data spec, each to be used exactly once.
struct SpecArgs<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
    used: std::cell::RefCell<Vec<&'a str>>,
}

impl<'a> SpecArgs<'a> {
    fn parse(spec: &'a str, args: &'a str) -> Result<Self> {
        let pairs = args
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').ok_or_else(|| Error::Data(format!("{spec}: expected key=value, got '{p}'"))))
            .collect::<Result<_>>()?;
        Ok(SpecArgs { spec, pairs, used: Default::default() })
    }

    fn raw(&self, key: &'a str) -> Option<&'a str> {
        self.used.borrow_mut().push(key);
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn required(&self, key: &'a str) -> Result<&'a str> {
        self.raw(key).ok_or_else(|| Error::Data(format!("{}: missing '{key}=...'", self.spec)))
    }

    fn float(&self, key: &'a str) -> Result<f64> {
        let v = self.required(key)?;
        v.parse().map_err(|_| Error::Data(format!("{}: {key}={v} is not a number", self.spec)))
    }

    fn int(&self, key: &'a str) -> Result<u64> {
        let v = self.required(key)?;
        match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Data(format!("{}: {key}={v} is not a positive integer", self.spec))),
        }
    }

    fn int_or(&self, key: &'a str, default: u64) -> Result<u64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::Data(format!("{}: {key}={v} is not an integer", self.spec))),
        }
    }

    /// A size like `3072` or a shape like `3x32x32`, of at most [`MAX_POINT_VALUES`] values.
    fn shape(&self, key: &'a str) -> Result<Vec<i64>> {
        let v = self.required(key)?;
        let shape = v
            .split('x')
            .map(|d| match d.parse::<i64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(Error::Data(format!("{}: {key}={v} is not a size or a shape like 3x32x32", self.spec))),
            })
            .collect::<Result<Vec<i64>>>()?;
        let values = shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d));
        if shape.len() > 4 || values.is_none_or(|n| n > MAX_POINT_VALUES) {
            return Err(Error::Data(format!(
                "{}: {key}={v} is too large; a point has at most 4 axes and {MAX_POINT_VALUES} values",
                self.spec
            )));
        }
        Ok(shape)
    }

    fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        match self.pairs.iter().find(|(k, _)| !used.contains(k)) {
            Some((k, _)) => Err(Error::Data(format!("{}: unknown key '{k}'", self.spec))),
            None => Ok(()),
        }
    }
}
