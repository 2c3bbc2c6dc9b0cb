//! Fuzzing every parser of outside bytes on stable Rust: seeded byte mutations of valid seed
//! files run through the public parse functions, which must return Ok or an error naming the
//! file, without panicking, and without any single allocation over [`ALLOCATION_LIMIT`] (the
//! allocator below refuses larger ones, which aborts the process and names the size).
//! (cargo-fuzz would need nightly and a sanitizer build of libtorch's C++ wrapper; this
//! harness runs in `cargo test` on the stable toolchain.)
//!
//! `cargo test --test fuzz` runs 5000 inputs per parser; `make fuzz N=1000000` (or
//! `CDM_FUZZ_INPUTS=N`) runs more, `CDM_FUZZ_SEED` picks another stream and
//! `CDM_FUZZ_TRACE=1` prints each input before it runs (to find one that aborts). Panicking
//! inputs are written to `target/fuzz-findings/`; the files in `tests/fuzz_inputs/PARSER/`
//! are earlier findings, run every time as regression tests.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cdm::checkpoint::TensorFile;
use cdm::config_file::ConfigFile;
use cdm::data::cifar10::{parse_labels, png_rows_to_records};
use cdm::data::images::{decode_image, parse_cifar10, parse_idx, square_crop};
use cdm::data::npy::{parse_npy, write_npy};
use cdm::data::Dataset;
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::rng::Rng;
use cdm::train::{RunConfig, TrainConfig};
use common::{gzip, idx, mlp_config};
use rand::{rngs::StdRng, Rng as _, SeedableRng};
use tch::{nn::VarStore, Kind, Tensor};

/// The largest single allocation any parser may make: a header's claims must be checked
/// against the bytes that exist before anything is allocated for them.
const ALLOCATION_LIMIT: usize = 256 << 20;

/// The system allocator, refusing any single allocation over [`ALLOCATION_LIMIT`] and
/// remembering the largest one granted.
struct Bounded;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fn inputs_per_parser() -> usize {
    std::env::var("CDM_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000)
}

fn fuzz_seed() -> u64 {
    std::env::var("CDM_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Integers that break size arithmetic, in 4 bytes.
const INTERESTING_U32: [u32; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];
/// Numbers and tokens that break text parsers (data specs, headers, TOML and JSON).
const INTERESTING_TEXT: [&str; 20] = [
    "0",
    "-1",
    "1000000000000",
    "18446744073709551616",
    "nan",
    "inf",
    "1e308",
    "",
    "\"",
    "99999999999999999999x9",
    "[0]",
    "[]",
    "{}",
    ",",
    "x0",
    "=",
    ":",
    "true",
    "0.5, 0",
    "4294967296",
];

/// One seed with 1 to 4 random byte-level mutations: bit flips, random or boundary bytes,
/// big- and little-endian boundary integers, insertions, deletions, duplications, truncation,
/// and (for text) a run of digits replaced by a boundary number.
fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = data.len();
        let at = if len == 0 { 0 } else { rng.gen_range(0..len) };
        match rng.gen_range(0..10) {
            0 if len > 0 => data[at] ^= 1 << rng.gen_range(0..8),
            1 if len > 0 => data[at] = rng.gen(),
            2 if len > 0 => data[at] = [0u8, 1, 0x7f, 0x80, 0xff][rng.gen_range(0..5)],
            3 if len >= 4 => {
                let v = INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())];
                let bytes = if rng.gen() { v.to_be_bytes() } else { v.to_le_bytes() };
                let at = rng.gen_range(0..=len - 4);
                data[at..at + 4].copy_from_slice(&bytes);
            }
            4 => {
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                data.splice(at..at, extra);
            }
            5 if len > 0 => {
                let end = (at + rng.gen_range(1..=16)).min(len);
                data.drain(at..end);
            }
            6 if len > 0 => {
                let end = (at + rng.gen_range(1..=64)).min(len);
                let copy = data[at..end].to_vec();
                let to = rng.gen_range(0..=len);
                data.splice(to..to, copy);
            }
            7 if len > 0 => data.truncate(at),
            8 => {
                let token = INTERESTING_TEXT[rng.gen_range(0..INTERESTING_TEXT.len())];
                data.splice(at..at, token.bytes());
            }
            _ => {
                // Replace the digit run at or after `at` with a boundary number or token.
                if let Some(start) = data[at..].iter().position(|b| b.is_ascii_digit()).map(|p| p + at) {
                    let end = data[start..].iter().position(|b| !b.is_ascii_digit()).map_or(len, |p| p + start);
                    let text = INTERESTING_TEXT[rng.gen_range(0..INTERESTING_TEXT.len())];
                    data.splice(start..end, text.bytes());
                }
            }
        }
    }
    data
}

/// Outcomes of one parser's run.
#[derive(Default)]
struct Tally {
    accepted: usize,
    rejected: usize,
    /// Inputs that panicked, or whose error did not name the file, with the message.
    findings: Vec<(Vec<u8>, String)>,
    slowest: Duration,
}

/// What a parser made of one input: accepted, or the error's message.
type Outcome = Result<(), String>;

/// Runs `parse` on the regression inputs of `name`, on every seed, and on `n` mutants; fails
/// listing every input that panicked, or whose error lacks `names` (the file the parser was
/// told it reads), each written to `target/fuzz-findings/`. Every seed must be accepted: a
/// parser that rejects everything would otherwise pass, its mutants all "rejected with an
/// error".
fn fuzz(name: &str, seeds: &[Vec<u8>], n: usize, names: Option<&str>, parse: impl Fn(&[u8]) -> Outcome) {
    fuzz_from(name, seeds, &[], n, names, parse)
}

/// [`fuzz`] with `bad_seeds` as well: inputs that must be rejected with an error (a path to a
/// file that does not exist, say), mutated like the others so that the error paths are fuzzed
/// too.
fn fuzz_from(
    name: &str,
    seeds: &[Vec<u8>],
    bad_seeds: &[Vec<u8>],
    n: usize,
    names: Option<&str>,
    parse: impl Fn(&[u8]) -> Outcome,
) {
    assert!(!seeds.is_empty(), "{name}: no seed the parser accepts");
    let trace = std::env::var_os("CDM_FUZZ_TRACE").is_some();
    let mut rng = StdRng::seed_from_u64(fuzz_seed() ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64));
    let regressions = regression_inputs(name);
    let all_seeds: Vec<&Vec<u8>> = seeds.iter().chain(bad_seeds).collect();
    let mut tally = Tally::default();
    let start = Instant::now();
    let total = regressions.len() + all_seeds.len() + n;
    for i in 0..total {
        // Which seed this input is, if it is one, and whether it must be accepted.
        let seed = (regressions.len()..regressions.len() + all_seeds.len())
            .contains(&i)
            .then(|| i - regressions.len())
            .map(|k| (k, k < seeds.len()));
        let input = if i < regressions.len() {
            regressions[i].clone()
        } else if let Some((k, _)) = seed {
            all_seeds[k].clone()
        } else {
            mutate(all_seeds[rng.gen_range(0..all_seeds.len())], &mut rng)
        };
        if trace {
            eprintln!("{name} input {i}: {input:02x?}");
        }
        let began = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| parse(&input)));
        match (&result, seed) {
            (Ok(Ok(())), Some((k, false))) => {
                tally.findings.push((input.clone(), format!("bad seed {k} was accepted; it must be rejected")))
            }
            (Ok(Err(msg)), Some((k, true))) => {
                tally.findings.push((input.clone(), format!("seed {k} was rejected; every seed must parse: {msg}")))
            }
            _ => {}
        }
        match result {
            Ok(Ok(())) => tally.accepted += 1,
            Ok(Err(msg)) if names.is_some_and(|file| !msg.contains(file)) => {
                tally.findings.push((input, format!("error without the file name: {msg}")))
            }
            Ok(Err(_)) => tally.rejected += 1,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tally.findings.push((input, format!("panic: {msg}")));
            }
        }
        tally.slowest = tally.slowest.max(began.elapsed());
    }
    eprintln!(
        "fuzz {name}: {total} inputs ({} regressions, {} seeds, each accepted, and {} bad seeds, each rejected) in \
         {:.1} s: {} accepted, {} rejected with an error, {} findings; slowest input {:.1} ms; largest allocation in \
         this binary so far {} bytes",
        regressions.len(),
        seeds.len(),
        bad_seeds.len(),
        start.elapsed().as_secs_f64(),
        tally.accepted,
        tally.rejected,
        tally.findings.len(),
        tally.slowest.as_secs_f64() * 1e3,
        LARGEST.load(Ordering::Relaxed)
    );
    if !tally.findings.is_empty() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-findings").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (k, (input, _)) in tally.findings.iter().enumerate() {
            std::fs::write(dir.join(format!("{k}.bin")), input).unwrap();
        }
        let first: Vec<_> = tally.findings.iter().take(5).map(|(i, m)| format!("{m}\n  input {i:02x?}")).collect();
        panic!("{name}: {} findings (inputs saved in {}):\n{}", tally.findings.len(), dir.display(), first.join("\n"));
    }
}

#[test]
#[should_panic(expected = "every seed must parse")]
fn a_parser_that_rejects_everything_fails_the_harness() {
    // Its mutants would all count as "rejected with an error"; the seeds are what catch it.
    fuzz("reject-all", &[b"anything".to_vec()], 10, None, |_| Err("no".into()));
}

#[test]
#[should_panic(expected = "it must be rejected")]
fn a_bad_seed_that_parses_fails_the_harness() {
    fuzz_from("accept-all", &[b"good".to_vec()], &[b"bad".to_vec()], 10, None, |_| Ok(()));
}

/// Earlier findings for `name`, from `tests/fuzz_inputs/NAME/`.
fn regression_inputs(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs").join(name);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A parser's result as an [`Outcome`].
fn outcome<T>(result: cdm::Result<T>) -> Outcome {
    result.map(|_| ()).map_err(|e| e.to_string())
}

fn file(name: &str) -> PathBuf {
    PathBuf::from(format!("fuzzed/{name}"))
}

fn npy_bytes(x: &Tensor) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    write_npy(&path, x).unwrap();
    std::fs::read(path).unwrap()
}

/// A float32 `.npy` (version 1 or 2, either byte order or memory order) written by hand,
/// as numpy would.
fn npy_f32(shape: &[usize], version: u8, big_endian: bool, fortran: bool) -> Vec<u8> {
    let shape_text = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let order = if big_endian { '>' } else { '<' };
    let fortran = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{order}f4', 'fortran_order': {fortran}, 'shape': {shape_text}, }}");
    let prefix = if version == 1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY".to_vec();
    bytes.extend([version, 0]);
    if version == 1 {
        bytes.extend((header.len() as u16).to_le_bytes());
    } else {
        bytes.extend((header.len() as u32).to_le_bytes());
    }
    bytes.extend(header.bytes());
    for i in 0..shape.iter().product::<usize>() {
        let v = i as f32 * 0.5 - 1.0;
        bytes.extend(if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    }
    bytes
}

#[test]
fn npy_files() {
    let seeds = vec![
        npy_bytes(&Tensor::from_slice(&[0.5f64, -1.0, 2.0, 3.0, 4.0, 5.0]).reshape([3, 2])),
        npy_bytes(&Tensor::arange(24, (Kind::Double, tch::Device::Cpu)).reshape([2, 3, 2, 2])),
        npy_f32(&[2, 3], 1, false, false),
        npy_f32(&[2, 2], 2, true, true),
        npy_f32(&[1, 1, 2, 2], 3, false, true),
    ];
    fuzz("npy", &seeds, inputs_per_parser(), Some("x.npy"), |bytes| outcome(parse_npy(bytes, &file("x.npy"))));
}

fn idx_seeds() -> Vec<Vec<u8>> {
    vec![
        idx(&[3, 2, 2], &[0, 255, 51, 204, 0, 0, 0, 0, 255, 255, 255, 255]),
        idx(&[3], &[7, 0, 9]),
        idx(&[1, 28, 28], &[9; 784]),
    ]
}

#[test]
fn idx_files() {
    fuzz("idx", &idx_seeds(), inputs_per_parser(), Some("images-idx3-ubyte"), |bytes| {
        outcome(parse_idx(bytes, &file("images-idx3-ubyte")))
    });
}

#[test]
fn idx_gzip_files() {
    let seeds: Vec<Vec<u8>> = idx_seeds().iter().map(|b| gzip(b)).collect();
    fuzz("idx-gzip", &seeds, inputs_per_parser(), Some("images-idx3-ubyte.gz"), |bytes| {
        outcome(parse_idx(bytes, &file("images-idx3-ubyte.gz")))
    });
}

#[test]
fn cifar10_batches() {
    let record = |label: u8, value: u8| [vec![label], vec![value; 3072]].concat();
    let seeds = vec![record(3, 51), [record(0, 0), record(9, 255)].concat()];
    fuzz("cifar10", &seeds, inputs_per_parser(), Some("data_batch_1.bin"), |bytes| {
        outcome(parse_cifar10(bytes, &file("data_batch_1.bin")))
    });
}

#[test]
fn cifar10_png_rows() {
    // The npm package's layout: one 32×32 RGB image per row of a 1024-wide PNG.
    let rows = image::RgbImage::from_fn(1024, 2, |x, y| image::Rgb([x as u8, y as u8 * 99, 7]));
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(rows).write_to(&mut png, image::ImageFormat::Png).unwrap();
    fuzz("cifar10-png", &[png.into_inner()], inputs_per_parser(), Some("data_batch_1.png"), |bytes| {
        outcome(png_rows_to_records(bytes, &[3, 9], &file("data_batch_1.png")))
    });
}

#[test]
fn cifar10_label_files() {
    let seeds = vec![b"[3,8,8,0,6,6,1,6,3,1]".to_vec(), b"[0, 9]".to_vec()];
    fuzz("cifar10-labels", &seeds, inputs_per_parser(), Some("test_lables.json"), |bytes| {
        outcome(parse_labels(bytes, &file("test_lables.json")))
    });
}

#[test]
fn folder_images() {
    let encode = |format: image::ImageFormat, img: image::DynamicImage| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let gradient = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 128]));
    let grey = image::GrayImage::from_fn(5, 5, |x, y| image::Luma([(x * y) as u8 * 10]));
    let seeds = vec![
        encode(image::ImageFormat::Png, image::DynamicImage::ImageRgb8(gradient.clone())),
        encode(image::ImageFormat::Png, image::DynamicImage::ImageLuma8(grey)),
        encode(image::ImageFormat::Jpeg, image::DynamicImage::ImageRgb8(gradient)),
    ];
    fuzz("image", &seeds, inputs_per_parser(), Some("a.png"), |bytes| {
        let img = decode_image(bytes, &file("a.png")).map_err(|e| e.to_string())?;
        assert_eq!(square_crop(&img, 4).dimensions(), (4, 4));
        Ok(())
    });
}

/// A tiny MLP CDM's run config.
fn tiny_config() -> RunConfig {
    RunConfig {
        data: "gmm:d=3,k=2".into(),
        model: mlp_config(ModelKind::Cdm, 4, MlpConfig { hidden: 4, blocks: 1, ..MlpConfig::default() }, &[3]),
        train: TrainConfig { batch_size: 8, ..Default::default() },
    }
}

#[test]
fn checkpoint_weights() {
    let config = tiny_config();
    let vs = VarStore::new(tch::Device::Cpu);
    let _model = Model::new(&vs.root(), &config.model).unwrap();
    let mut saved = TensorFile::default();
    saved.insert_vars("ema", &vs);
    saved.metadata.insert("step".into(), "3".into());
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("checkpoint.safetensors");
    saved.save(&weights).unwrap();
    // Loaded into a fresh model of the same config, as `load_model` does.
    let seeds = [std::fs::read(&weights).unwrap()];
    fuzz("safetensors", &seeds, inputs_per_parser(), Some("checkpoint.safetensors"), |bytes| {
        let path = file("checkpoint.safetensors");
        let loaded = TensorFile::parse(bytes, &path).map_err(|e| e.to_string())?;
        let mut vs = VarStore::new(tch::Device::Cpu);
        let _model = Model::new(&vs.root(), &config.model).unwrap();
        outcome(loaded.load_vars("ema", &mut vs, &path))
    });
}

#[test]
fn checkpoint_configs() {
    let config = tiny_config();
    let unet = RunConfig {
        model: ModelConfig {
            kind: ModelKind::Ddm,
            backbone: BackboneConfig::Unet(cdm::nets::UnetConfig::tiny()),
            data_shape: vec![1, 8, 8],
            gaussian_base: true,
            ..config.model.clone()
        },
        ..config.clone()
    };
    let seeds = vec![serde_json::to_vec_pretty(&config).unwrap(), serde_json::to_vec(&unet).unwrap()];
    // config.json, read and checked as `load_model` does before it builds anything.
    fuzz("config-json", &seeds, inputs_per_parser(), None, |bytes| {
        let run = serde_json::from_slice::<RunConfig>(bytes).map_err(|e| e.to_string())?;
        outcome(run.model.validate().and_then(|()| run.train.validate()))
    });
}

#[test]
fn config_files_toml() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seeds: Vec<Vec<u8>> = ["cube.toml", "ablation/both.toml", "ablation/tdr.toml"]
        .iter()
        .map(|name| std::fs::read(configs.join(name)).unwrap())
        .collect();
    seeds.push(b"data = \"gmm2d\"\nmodel = \"ddm\"\n[backbone]\ntype = \"unet\"\nchannel_mult = [1, 2]\n".to_vec());
    fuzz("config-toml", &seeds, inputs_per_parser(), Some("run.toml"), |bytes| {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("run.toml: {e}"))?;
        outcome(ConfigFile::parse(text, &file("run.toml")))
    });
}

#[test]
fn config_files_json() {
    let seeds = vec![
        br#"{"data": "gmm2d", "model": "cdm", "schedule": {"kind": "linear", "timesteps": 100}, "backbone": {"type": "mlp", "hidden": 64, "blocks": 2}, "train": {"steps": 10, "batch_size": 16, "lr_decay": {"type": "step", "every": 5, "factor": 0.5}}}"#
            .to_vec(),
        br#"{"backbone": {"type": "convnet", "channels": 8, "channel_mult": [1, 2], "groups": 4}}"#.to_vec(),
    ];
    fuzz("config-json-file", &seeds, inputs_per_parser(), Some("run.json"), |bytes| {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("run.json: {e}"))?;
        outcome(ConfigFile::parse(text, &file("run.json")))
    });
}

/// A path no fuzzed spec may leave: specs naming files read only below it.
const NO_SUCH_DIR: &str = "/nonexistent-cdm-fuzz";

#[test]
fn data_specs() {
    let bytes = |specs: &[&str]| specs.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    let seeds =
        bytes(&["uniform:d=3x32x32,g=0.5", "uniform:d=4,g=2", "gmm:d=16,k=4,seed=0", "gmm2d", "checkerboard", "rings"]);
    // Well-formed specs of files that do not exist: their mutants reach the file readers' errors.
    let missing = bytes(&[
        "npy:/nonexistent-cdm-fuzz/x.npy",
        "folder:/nonexistent-cdm-fuzz/images,size=8",
        "cifar10:/nonexistent-cdm-fuzz/cifar,split=test",
    ]);
    fuzz_from("data-spec", &seeds, &missing, inputs_per_parser(), None, |bytes| {
        let spec = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        // The image sets download on first use, and other paths are the user's own files.
        let touches_files = matches!(name, "npy" | "folder" | "cifar10") && !args.starts_with(NO_SUCH_DIR);
        if matches!(name, "mnist" | "fashion-mnist" | "digits") || touches_files || args.contains("..") {
            return Err("skipped: not opened by the fuzzer".into());
        }
        let data = Dataset::open(spec).map_err(|e| e.to_string())?;
        let (x, _) = data.batch(cdm::distributed::Shard::whole(2), &mut Rng::new(0));
        assert!(!data.describe(spec).is_empty());
        assert_eq!(x.size()[1..], data.shape()[..]);
        Ok(())
    });
}
