//! Bad input gets a clear error naming the problem, through the real binary: never a panic.
mod common;

use std::path::Path;
use std::process::Command;

use cdm::data::npy::write_npy;
use common::idx;
use tch::{Kind, Tensor};

/// Runs `cdm ARGS` and returns (success, stderr).
fn cdm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_error(args: &[&str], needles: &[&str]) {
    let (ok, stderr) = cdm(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: stderr lacks '{needle}':\n{stderr}");
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny trained run in `dir` on 3-D points.
fn tiny_run(dir: &Path) {
    let (ok, stderr) = cdm(&[
        "train",
        "--data",
        "gmm:d=3,k=2",
        "--out",
        path_str(dir),
        "--steps",
        "3",
        "--timesteps",
        "10",
        "--hidden",
        "8",
        "--batch",
        "8",
    ]);
    assert!(ok, "{stderr}");
}

#[test]
fn unknown_data_specs() {
    let out = tempfile::tempdir().unwrap();
    let o = path_str(out.path());
    assert_error(&["train", "--data", "mnist7", "--out", o], &["unknown data spec 'mnist7'", "npy:PATH"]);
    assert_error(&["train", "--data", "uniform:d=4", "--out", o], &["uniform:d=4", "missing 'g=...'"]);
    assert_error(&["train", "--data", "uniform:d=4,g=-1", "--out", o], &["g must be a positive width"]);
    assert_error(&["train", "--data", "uniform:d=4,g=1,h=2", "--out", o], &["unknown key 'h'"]);
    assert_error(&["train", "--data", "gmm:d=3x,k=2", "--out", o], &["d=3x is not a size"]);
}

#[test]
fn missing_malformed_and_non_finite_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("run");
    let missing = dir.path().join("nothing.npy");
    assert_error(
        &["train", "--data", &format!("npy:{}", path_str(&missing)), "--out", path_str(&o)],
        &["nothing.npy", "No such file"],
    );

    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"not an npy file").unwrap();
    assert_error(
        &["train", "--data", &format!("npy:{}", path_str(&garbage)), "--out", path_str(&o)],
        &["garbage.npy", "not a float32/float64 .npy array"],
    );

    let rank3 = dir.path().join("rank3.npy");
    write_npy(&rank3, &Tensor::zeros([2, 3, 4], (Kind::Double, tch::Device::Cpu))).unwrap();
    assert_error(
        &["train", "--data", &format!("npy:{}", path_str(&rank3)), "--out", path_str(&o)],
        &["rank3.npy", "[2, 3, 4]", "N x D or N x C x H x W"],
    );

    let nan = dir.path().join("nan.npy");
    let x = Tensor::from_slice(&[0.0, 1.0, 2.0, f64::NAN, 4.0, 5.0]).reshape([3, 2]);
    write_npy(&nan, &x).unwrap();
    assert_error(
        &["train", "--data", &format!("npy:{}", path_str(&nan)), "--out", path_str(&o)],
        &["nan.npy", "row 1, element 1 is not finite"],
    );
}

#[test]
fn wrong_shapes_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run);
    let wrong = dir.path().join("wrong.npy");
    write_npy(&wrong, &Tensor::zeros([5, 4], (Kind::Double, tch::Device::Cpu))).unwrap();
    assert_error(
        &["denoise", "--ckpt", path_str(&run), "--input", path_str(&wrong), "--level", "3"],
        &["wrong.npy", "shape [5, 4]", "expects [B, 3]"],
    );
    assert_error(
        &["nll", "--ckpt", path_str(&run), "--data", &format!("npy:{}", path_str(&wrong))],
        &["shape [5, 4]", "expects [B, 3]"],
    );
    let right = dir.path().join("right.npy");
    write_npy(&right, &Tensor::zeros([5, 3], (Kind::Double, tch::Device::Cpu))).unwrap();
    assert_error(
        &["denoise", "--ckpt", path_str(&run), "--input", path_str(&right), "--level", "11"],
        &["--level 11", "must be in 1..=10"],
    );
    assert_error(
        &["nll", "--ckpt", path_str(&run), "--data", "gmm:d=3,k=2", "--level", "12"],
        &["level 12 is outside 0..=11"],
    );
    assert_error(
        &[
            "sample",
            "--ckpt",
            path_str(&run),
            "--n",
            "2",
            "--steps",
            "11",
            "--out",
            path_str(&dir.path().join("s.npy")),
        ],
        &["steps must be in 1..=10"],
    );
    // A different model on an existing run directory is refused rather than mixed in.
    assert_error(
        &[
            "train",
            "--data",
            "gmm:d=3,k=2",
            "--out",
            path_str(&run),
            "--steps",
            "3",
            "--timesteps",
            "20",
            "--hidden",
            "8",
        ],
        &["holds a run with other settings"],
    );
}

#[test]
fn corrupt_and_missing_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run);
    let weights = run.join("checkpoint.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        &["nll", "--ckpt", path_str(&run), "--data", "gmm:d=3,k=2"],
        &["checkpoint.safetensors", "corrupt or truncated safetensors"],
    );
    std::fs::write(&weights, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage").unwrap();
    assert_error(&["nll", "--ckpt", path_str(&run), "--data", "gmm:d=3,k=2"], &["checkpoint.safetensors"]);
    std::fs::write(run.join("config.json"), b"{\"data\": 3}").unwrap();
    assert_error(&["nll", "--ckpt", path_str(&run), "--data", "gmm:d=3,k=2"], &["config.json", "invalid type"]);
    assert_error(
        &["nll", "--ckpt", path_str(&dir.path().join("none")), "--data", "gmm2d"],
        &["none/config.json", "No such file"],
    );
}

#[test]
fn conditional_sampling_checks_its_classes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let r = path_str(&run);
    let (ok, stderr) = cdm(&[
        "train",
        "--data",
        "digits",
        "--conditional",
        "--out",
        r,
        "--steps",
        "2",
        "--batch",
        "4",
        "--channels",
        "8",
        "--timesteps",
        "10",
    ]);
    assert!(ok, "{stderr}");
    let grid = dir.path().join("grid.png");
    let (ok, stderr) =
        cdm(&["sample", "--ckpt", r, "--n", "20", "--steps", "2", "--guidance", "1.25", "--out", path_str(&grid)]);
    assert!(ok && grid.exists(), "{stderr}");
    // Not a multiple of the ten classes: the grid pads the short rows.
    let ragged = dir.path().join("ragged.png");
    let (ok, stderr) = cdm(&["sample", "--ckpt", r, "--n", "16", "--steps", "2", "--out", path_str(&ragged)]);
    assert!(ok && ragged.exists() && !stderr.contains("panicked"), "{stderr}");
    let one = dir.path().join("threes");
    let (ok, stderr) =
        cdm(&["sample", "--ckpt", r, "--n", "2", "--steps", "2", "--class", "3", "--out", path_str(&one)]);
    assert!(ok && one.join("00001.png").exists(), "{stderr}");
    assert_error(
        &["sample", "--ckpt", r, "--n", "2", "--steps", "2", "--class", "10", "--out", path_str(&grid)],
        &["class 10", "classes 0..9"],
    );
    assert_error(
        &["sample", "--ckpt", r, "--n", "2", "--steps", "2", "--out", path_str(&dir.path().join("x.txt"))],
        &["expected FILE.npy"],
    );
    // SDEdit: from the data's own points and labels, noised to a level.
    let edited = dir.path().join("edited.png");
    let sdedit = ["sample", "--ckpt", r, "--n", "5", "--init", "digits", "--steps", "2", "--out", path_str(&edited)];
    let (ok, stderr) = cdm(&[&sdedit[..], &["--from-level", "4"]].concat());
    assert!(ok && edited.exists(), "{stderr}");
    assert_error(&[&sdedit[..], &["--from-level", "11"]].concat(), &["--from-level 11", "must be in 1..=10, got 11"]);
    assert_error(&[&sdedit[..], &["--from-level", "1"]].concat(), &["steps must be in 1..=1, got 2"]);
    assert_error(&[&sdedit[..5], &["--from-level", "4", "--out", "x.png"]].concat(), &["--init"]);
    assert_error(
        &[&sdedit[..6], &["npy:none.npy", "--from-level", "4", "--out", "x.png"]].concat(),
        &["--init npy:none.npy"],
    );
    assert_error(
        &["train", "--data", "gmm2d", "--conditional", "--out", path_str(&dir.path().join("c"))],
        &["'gmm2d' has no labels"],
    );
    let plain = dir.path().join("plain");
    tiny_run(&plain);
    assert_error(
        &[
            "sample",
            "--ckpt",
            path_str(&plain),
            "--n",
            "2",
            "--class",
            "1",
            "--out",
            path_str(&dir.path().join("x.npy")),
        ],
        &["need a conditional model"],
    );
}

/// Runs `cdm ARGS` with `XDG_CACHE_HOME` set to `cache` (where datasets are looked up).
fn cdm_with_cache(args: &[&str], cache: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A `.npy` header for `shape` (float32 or float64) followed by `data` bytes, whatever their
/// number.
fn npy_header(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.bytes());
    bytes.extend(data);
    bytes
}

#[test]
fn zero_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run);
    let r = path_str(&run);
    assert_error(&["nll", "--ckpt", r, "--data", "gmm:d=3,k=2", "--n", "0"], &["--n", "must be at least 1"]);
    let report = path_str(&dir.path().join("report")).to_string();
    assert_error(&["eval", "--ckpt", r, "--out", &report, "--n", "0"], &["--n", "must be at least 1"]);
    assert_error(
        &["eval", "--ckpt", r, "--out", &report, "--nfe-images", "0"],
        &["--nfe-images", "must be at least 1"],
    );
    assert_error(
        &["eval", "--ckpt", r, "--out", &report, "--evaluations", "4,0"],
        &["--evaluations", "must be at least 1"],
    );
}

/// A count too large to hold (10^11 points) is a usage error, exit code 2, before anything is
/// allocated: never an allocation failure.
#[test]
fn counts_too_large_to_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (run, flat) = (dir.path().join("run"), dir.path().join("flat"));
    tiny_run(&run);
    let (ok, stderr) =
        cdm(&["train", "--data", "gmm2d", "--out", path_str(&flat), "--steps", "2", "--hidden", "8", "--batch", "8"]);
    assert!(ok, "{stderr}");
    let (r, f) = (path_str(&run), path_str(&flat));
    let out = |name: &str| path_str(&dir.path().join(name)).to_string();
    let huge = "100000000000";
    for args in [
        vec!["nll", "--ckpt", r, "--data", "gmm:d=3,k=2", "--n", huge],
        vec!["sample", "--ckpt", r, "--n", huge, "--steps", "2", "--out", &out("x.npy")],
        vec!["eval", "--ckpt", r, "--out", &out("report"), "--n", huge],
        vec!["eval", "--ckpt", r, "--out", &out("report"), "--n", "10", "--fid-samples", huge],
        vec!["mmse", "--ckpt", r, "--n", huge],
        vec!["plot", "density", "--ckpt", f, "--out", &out("p.png"), "--grid", huge],
        vec!["plot", "density", "--ckpt", f, "--out", &out("p.png"), "--samples", huge],
        vec!["bench", "--batch", huge, "--steps", "1"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cdm")).args(&args).env("OMP_NUM_THREADS", "1").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{args:?}:\n{stderr}");
        assert!(stderr.contains(huge) && stderr.contains("8 GiB"), "{args:?}:\n{stderr}");
    }
    // A batch larger than the points is just one batch.
    let (ok, stderr) = cdm(&["nll", "--ckpt", r, "--data", "gmm:d=3,k=2", "--n", "20", "--batch", huge]);
    assert!(ok, "{stderr}");
}

#[test]
fn the_memory_bound_is_exact() {
    use cdm::data::{check_held, MAX_HELD_VALUES};
    let half = (MAX_HELD_VALUES / 2) as usize;
    assert!(check_held("--n", half, &[2]).is_ok());
    assert!(check_held("--n", half + 1, &[2]).is_err());
    // Products that overflow u64 are refused, not wrapped.
    assert!(check_held("--n", usize::MAX, &[i64::MAX, 2]).is_err());
}

#[test]
fn npy_headers_are_checked_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = path_str(&dir.path().join("run")).to_string();
    let train = |name: &str, bytes: &[u8], needles: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_error(&["train", "--data", &format!("npy:{}", path_str(&path)), "--out", &o], needles);
    };
    // 10^12 rows claimed by a 40-byte file: an error before anything is allocated for them.
    train(
        "huge.npy",
        &npy_header("<f8", "(1000000000000, 2)", &[0; 40]),
        &["huge.npy", "truncated", "[1000000000000, 2]", "16000000000000 bytes of data", "holds 40 bytes"],
    );
    // A float32 file cut short is reported as truncated, not as a wrong type.
    let values: Vec<u8> = (0..5).flat_map(|i| (i as f32).to_le_bytes()).collect();
    train("short.npy", &npy_header("<f4", "(3, 2)", &values), &["short.npy", "truncated", "24 bytes", "holds 20"]);
    train("overflow.npy", &npy_header("<f4", "(18446744073709551615, 3)", &[]), &["overflow.npy", "overflows"]);
    train("ints.npy", &npy_header("<i8", "(1, 2)", &[0; 16]), &["ints.npy", "dtype '<i8'"]);
}

/// A cache folder in which `mnist` is already "downloaded" as the given IDX files.
fn fake_mnist(cache: &Path, images: &[u8], labels: &[u8]) {
    let dir = cache.join("cdm/data/mnist");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
    std::fs::write(dir.join(".complete"), b"").unwrap();
}

#[test]
fn idx_files_without_images_or_with_impossible_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let o = path_str(&dir.path().join("run")).to_string();
    let args = ["train", "--data", "mnist", "--out", &o, "--steps", "1"];
    let empty = dir.path().join("empty");
    fake_mnist(&empty, &idx(&[0, 28, 28], &[]), &idx(&[0], &[]));
    let (ok, stderr) = cdm_with_cache(&args, &empty);
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("train-images-idx3-ubyte") && stderr.contains("empty dimension"), "{stderr}");
    let overflow = dir.path().join("overflow");
    fake_mnist(&overflow, &idx(&[u32::MAX; 4], &[1, 2, 3]), &idx(&[1], &[0]));
    let (ok, stderr) = cdm_with_cache(&args, &overflow);
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("more bytes than can exist"), "{stderr}");
}

#[test]
fn cifar10_batches_of_the_wrong_size() {
    let dir = tempfile::tempdir().unwrap();
    let o = path_str(&dir.path().join("run")).to_string();
    let cifar = dir.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), vec![1u8; 3073 * 2 + 5]).unwrap();
    assert_error(
        &["train", "--data", &format!("cifar10:{},split=test", path_str(&cifar)), "--out", &o],
        &["test_batch.bin", "6151 bytes is not a whole number of 3073-byte CIFAR-10 records"],
    );
    std::fs::write(cifar.join("test_batch.bin"), b"").unwrap();
    assert_error(
        &["train", "--data", &format!("cifar10:{},split=test", path_str(&cifar)), "--out", &o],
        &["test_batch.bin", "0 bytes"],
    );
}

#[test]
fn nonsensical_configs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = path_str(&dir.path().join("run")).to_string();
    let config = dir.path().join("bad.toml");
    let with_config = |text: &str, needles: &[&str]| {
        std::fs::write(&config, text).unwrap();
        assert_error(&["train", "--data", "gmm2d", "--config", path_str(&config), "--out", &o], needles);
    };
    with_config("[backbone]\ntype = \"unet\"\nchannel_mult = [1, 0]\n", &["bad.toml", "backbone.channel_mult holds 0"]);
    with_config("[backbone]\ntype = \"convnet\"\nchannels = 6\ngroups = 4\n", &["bad.toml", "not divisible"]);
    with_config("[backbone]\ntype = \"mlp\"\nhidden = 0\n", &["bad.toml", "backbone.hidden is 0"]);
    with_config(
        "[schedule]\nkind = \"linear\"\ntimesteps = 1000000000\n",
        &["bad.toml", "schedule.timesteps is 1000000000"],
    );
    with_config("[train]\nbatch_size = 1000000000000\n", &["bad.toml", "train.batch_size"]);
    assert_error(&["train", "--data", "uniform:d=100000x100000,g=1", "--out", &o], &["d=100000x100000 is too large"]);
    assert_error(&["train", "--data", "gmm:d=65536,k=100000", "--out", &o], &["k × d"]);
    // A checkpoint whose config.json was edited into nonsense names the field.
    let run = dir.path().join("tiny");
    tiny_run(&run);
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"hidden\": 8", "\"hidden\": 0");
    std::fs::write(&path, text).unwrap();
    assert_error(&["nll", "--ckpt", path_str(&run), "--data", "gmm:d=3,k=2"], &["config.json", "backbone.hidden is 0"]);
}

#[test]
fn folders_keep_their_size_or_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30])).save(images.join("a.png")).unwrap();
    image::RgbImage::from_pixel(16, 8, image::Rgb([10, 20, 30])).save(images.join("b.png")).unwrap();
    let o = path_str(&dir.path().join("run")).to_string();
    let spec = format!("folder:{}", path_str(&images));
    assert_error(
        &["train", "--data", &spec, "--out", &o],
        &["images differ in size", "a.png: 8×8", "b.png: 16×8", "size=N"],
    );
    assert_error(&["train", "--data", &format!("{spec},size=0"), "--out", &o], &["size=0 is not a positive integer"]);
    assert_error(&["train", "--data", &format!("{spec},size=5000"), "--out", &o], &["size=5000; expected 1..=4096"]);
}

#[test]
fn out_of_range_levels_and_labels_through_the_library() {
    use cdm::likelihood::log_prob_at_levels;
    use cdm::loss::LossWeights;
    use cdm::model::{Model, ModelConfig, ModelKind};
    use cdm::nets::{BackboneConfig, MlpConfig};
    use cdm::schedule::ScheduleConfig;
    let device = tch::Device::Cpu;
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let cfg = ModelConfig {
            kind,
            schedule: ScheduleConfig { timesteps: 4, ..Default::default() },
            backbone: BackboneConfig::Mlp(MlpConfig { hidden: 8, blocks: 1, num_labels: 3, ..MlpConfig::default() }),
            data_shape: vec![2],
            gaussian_base: false,
            base_per_class: false,
        };
        let vs = tch::nn::VarStore::new(device);
        let model = Model::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::zeros([2, 2], (Kind::Float, device));
        let levels = |v: &[i64]| Tensor::from_slice(v);
        let labels = |v: &[i64]| Tensor::from_slice(v);
        let err = |r: cdm::Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
        // Levels 0..=T+1 = 0..=5 and labels 0..=3 (3: the null label) are fine.
        assert!(model.eps(&x, &levels(&[0, 5]), Some(&labels(&[0, 3]))).is_ok());
        assert!(err(model.eps(&x, &levels(&[1, 6]), None)).contains("level 6 is outside 0..=5"));
        assert!(err(model.eps(&x, &levels(&[1, -1]), None)).contains("level -1 is outside"));
        assert!(err(model.eps(&x, &levels(&[1]), None)).contains("levels t have shape [1], expected [2]"));
        assert!(err(model.eps(&x, &levels(&[1, 2]), Some(&labels(&[0, 4])))).contains("label 4 is outside 0..=3"));
        assert!(err(model.eps(&x, &levels(&[1, 2]), Some(&labels(&[-2, 0])))).contains("label -2"));
        let float_labels = Tensor::from_slice(&[0.0f32, 1.0]);
        assert!(err(model.eps(&x, &levels(&[1, 2]), Some(&float_labels))).contains("expected Int64 of shape [2]"));
        let loss = model.loss(
            &x,
            Some(&labels(&[0, 7])),
            &LossWeights::default(),
            cdm::distributed::Shard::whole(2),
            &mut cdm::rng::Rng::new(0),
        );
        assert!(loss.err().map(|e| e.to_string()).unwrap_or_default().contains("label 7 is outside"));
        if let Ok(classifier) = model.classifier() {
            assert!(err(classifier.logits(&x, Some(&labels(&[0, 9])), false)).contains("label 9"));
            assert!(err(log_prob_at_levels(classifier, &x, &[1], Some(&labels(&[9, 0])))).contains("label 9"));
        }
    }
}
