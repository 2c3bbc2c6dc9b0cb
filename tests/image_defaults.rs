//! Image data trains with image defaults (the `make mnist` recipe), stated in `--help` and
//! stored in config.json; a folder keeps its images' own size; `cdm nll` reports 8-bit images
//! in bits/dim of the discrete data by default.
use std::path::Path;
use std::process::Command;

/// Runs `cdm ARGS` and returns (success, stdout, stderr).
fn cdm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_states_the_image_defaults() {
    let (ok, stdout, _) = cdm(&["train", "--help"]);
    assert!(ok);
    let help = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in ["Image data", "batch 32", "lr 4e-4", "config.json", "[default: 32 for images, 1024 otherwise]"] {
        assert!(help.contains(needle), "--help lacks '{needle}':\n{stdout}");
    }
}

#[test]
fn a_folder_of_small_images_trains_at_its_own_size_with_image_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..6u8 {
        let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, i * 40]));
        img.save(images.join(format!("{i}.png"))).unwrap();
    }
    let run = dir.path().join("run");
    let spec = format!("folder:{}", path_str(&images));
    let (ok, _, stderr) =
        cdm(&["train", "--data", &spec, "--out", path_str(&run), "--steps", "1", "--timesteps", "10"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("6 images of 3×8×8 at their own size"), "{stderr}");
    assert!(stderr.contains("training to step 1: batch 32, lr 0.0004"), "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["data_shape"], serde_json::json!([3, 8, 8]));
    assert_eq!(config["model"]["backbone"]["type"], "unet");
    assert_eq!(config["model"]["backbone"]["channels"], 32, "the tiny UNet");
    let train = &config["train"];
    assert_eq!((train["batch_size"].as_u64(), train["lr"].as_f64()), (Some(32), Some(4e-4)));
    assert_eq!((train["min_snr"].as_f64(), train["checkpoint_every"].as_u64()), (Some(5.0), Some(500)));

    // size= resizes, and says so; a config file's [train] fields go over the image defaults.
    let resized = dir.path().join("resized");
    let config = dir.path().join("short.toml");
    std::fs::write(&config, "[train]\nsteps = 1\n[schedule]\nkind = \"linear\"\ntimesteps = 10\n").unwrap();
    let (ok, _, stderr) = cdm(&[
        "train",
        "--data",
        &format!("{spec},size=4"),
        "--out",
        path_str(&resized),
        "--config",
        path_str(&config),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("6 images of 3×4×4, centre-cropped to a square and resized as size= asks"), "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resized.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["train"]["steps"].as_u64(), config["train"]["batch_size"].as_u64()), (Some(1), Some(32)));

    // 8-bit images: bits/dim of the discrete data by default, the continuous figure labelled.
    let r = path_str(&run);
    let (ok, stdout, stderr) = cdm(&["nll", "--ckpt", r, "--data", &spec, "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let bpd = report["bits_per_dim_8bit"].as_f64().unwrap();
    assert!(report["bits_per_dim_8bit_convention"].as_str().unwrap().contains("uniform dequantization"));
    assert_eq!(report["continuous_points"], "the dequantized points on the [−1, 1] scale");
    // The 8-bit figure adds log2(128) = 7 bits to the continuous one of the same points.
    let continuous = report["nll_bits_per_dim"].as_f64().unwrap();
    assert!((bpd - continuous - 7.0).abs() < 1e-9, "{bpd} vs {continuous}");
    let (ok, stdout, stderr) = cdm(&["nll", "--ckpt", r, "--data", &spec]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("8-bit images:") && stdout.contains("continuous density of the dequantized points"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = cdm(&["nll", "--ckpt", r, "--data", &spec, "--continuous", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report.get("bits_per_dim_8bit").is_none(), "{stdout}");
}
