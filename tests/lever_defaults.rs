//! The likelihood levers are the defaults of a CDM on vector data (low levels, the cross-entropy
//! weighted 3, T by the overlap rule), Fourier features where the density has hard edges (docs/results.md §15): a fresh `cdm train` records them in config.json,
//! a flag or a config file switches each off, image data keeps them off, and a run saved before
//! them resumes without them.
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// Runs `cdm ARGS`, which must succeed, and returns the config.json of `--out`.
fn train(out: &Path, args: &[&str]) -> Value {
    let run = Command::new(env!("CARGO_BIN_EXE_cdm"))
        .args(["train", "--out", out.to_str().unwrap(), "--steps", "1", "--batch", "8"])
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap()
}

/// (low_levels, Fourier exponents, T) as config.json records them.
fn levers(config: &Value) -> (f64, Value, u64) {
    let fourier = config["model"]["backbone"].get("fourier").cloned().unwrap_or(json!(null));
    (
        config["train"]["low_levels"].as_f64().unwrap(),
        fourier,
        config["model"]["schedule"]["timesteps"].as_u64().unwrap(),
    )
}

/// The cross-entropy's weight as config.json records it.
fn ce_weight(config: &Value) -> f64 {
    config["train"]["ce_weight"].as_f64().unwrap()
}

#[test]
fn a_fresh_cdm_of_vectors_records_the_levers_and_each_switches_off() {
    let dir = tempfile::tempdir().unwrap();
    // A smooth density: the low levels and T = 50; a cube's hard faces add Fourier features.
    let smooth = train(&dir.path().join("smooth"), &["--data", "gmm2d", "--hidden", "8"]);
    assert_eq!(levers(&smooth), (0.5, json!([]), 50));
    assert_eq!(ce_weight(&smooth), 3.0);
    let cube = train(&dir.path().join("cube"), &["--data", "uniform:d=4,g=1", "--hidden", "8"]);
    assert_eq!(levers(&cube), (0.5, json!([0, 1, 2, 3, 4, 5]), 50));
    assert_eq!(ce_weight(&cube), 3.0);
    // A 200-dimensional cube: the overlap rule's 10·√(D/2) = 100 levels.
    let wide = train(&dir.path().join("wide"), &["--data", "uniform:d=200,g=1", "--hidden", "8"]);
    assert_eq!(levers(&wide).2, 100);

    let flags = [
        "--data",
        "uniform:d=4,g=1",
        "--hidden",
        "8",
        "--low-levels",
        "off",
        "--fourier",
        "off",
        "--timesteps",
        "1000",
        "--ce-weight",
        "1",
    ];
    let off = train(&dir.path().join("off"), &flags);
    assert_eq!((levers(&off), ce_weight(&off)), ((0.0, json!([]), 1000), 1.0));
    let zero = train(&dir.path().join("zero"), &["--data", "gmm2d", "--hidden", "8", "--low-levels", "0"]);
    assert_eq!(levers(&zero).0, 0.0);

    let file = dir.path().join("off.toml");
    std::fs::write(
        &file,
        "[train]\nlow_levels = 0\nce_weight = 1\n[backbone]\ntype = \"mlp\"\nhidden = 8\nfourier = []\n",
    )
    .unwrap();
    let from_file = train(&dir.path().join("file"), &["--data", "uniform:d=4,g=1", "--config", file.to_str().unwrap()]);
    assert_eq!((levers(&from_file), ce_weight(&from_file)), ((0.0, json!([]), 50), 1.0));

    // The levers are a CDM's: a DDM keeps the settings it had.
    let ddm = train(&dir.path().join("ddm"), &["--data", "uniform:d=4,g=1", "--hidden", "8", "--model", "ddm"]);
    assert_eq!((levers(&ddm), ce_weight(&ddm)), ((0.0, json!([]), 1000), 1.0));
}

#[test]
fn image_data_keeps_the_levers_off() {
    let dir = tempfile::tempdir().unwrap();
    let images = train(&dir.path().join("images"), &["--data", "uniform:d=1x8x8,g=2"]);
    assert_eq!((levers(&images), ce_weight(&images)), ((0.0, json!(null), 1000), 1.0));
    assert_eq!(images["model"]["backbone"]["type"], "unet");
}

#[test]
fn a_run_saved_before_the_levers_resumes_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old");
    let mut config = train(&out, &["--data", "uniform:d=4,g=1", "--hidden", "8", "--timesteps", "1000"]);
    // config.json as written before the fields existed; the checkpoint goes, so the run restarts
    // from its config.json.
    config["train"].as_object_mut().unwrap().remove("low_levels");
    config["train"]["ce_weight"] = json!(1.0);
    config["model"]["backbone"].as_object_mut().unwrap().remove("fourier");
    std::fs::write(out.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    std::fs::remove_file(out.join("checkpoint.safetensors")).unwrap();
    std::fs::remove_file(out.join("log.jsonl")).unwrap();
    let resumed = train(&out, &[]);
    assert_eq!((levers(&resumed), ce_weight(&resumed)), ((0.0, json!([]), 1000), 1.0));
}
