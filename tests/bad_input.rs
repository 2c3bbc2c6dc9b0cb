//! Bad input gets a clear error naming the problem, through the real binary: never a panic.
use std::path::Path;
use std::process::Command;

use cdm::data::npy::write_npy;
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
        &["--level 11 must be in 1..=10"],
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
    let one = dir.path().join("threes");
    let (ok, stderr) =
        cdm(&["sample", "--ckpt", r, "--n", "2", "--steps", "2", "--class", "3", "--out", path_str(&one)]);
    assert!(ok && one.join("00001.png").exists(), "{stderr}");
    assert_error(
        &["sample", "--ckpt", r, "--n", "2", "--steps", "2", "--class", "10", "--out", path_str(&grid)],
        &["--class 10", "classes 0..9"],
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
    assert_error(&[&sdedit[..], &["--from-level", "11"]].concat(), &["--from-level 11 must be in 1..=10"]);
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
        &["sample", "--ckpt", path_str(&plain), "--n", "2", "--class", "1", "--out", path_str(&grid)],
        &["need a conditional model"],
    );
}
