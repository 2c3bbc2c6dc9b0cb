//! The paper's recipes as files (configs/cifar10*.toml, configs/celeba64.toml): they parse, every
//! value they set reaches config.json, and what they switch off stays off, through a resume too.
//! The files that results were recorded from (configs/cube.toml, configs/ablation/*.toml) resolve
//! to the settings of those runs under today's defaults.
use std::path::{Path, PathBuf};
use std::process::Command;

use cdm::config_file::ConfigFile;
use cdm::model::ModelKind;
use cdm::nets::{BackboneConfig, ConvNetConfig, UnetConfig};
use cdm::schedule::{ScheduleConfig, ScheduleKind};
use cdm::train::{LrDecay, Precision, TrainConfig};

fn cdm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_recipe_parses_to_the_papers_settings() {
    // The paper's CE weight 0.001 and DDPM's clip 1 act on a loss averaged over an image's D
    // values, ours is summed over them: 0.001·D and D (D = 3072, and 12288 for CelebA 64).
    for (name, lr, ce_weight, grad_clip, unet) in [
        ("cifar10.toml", 2e-4, 3.072, 3072.0, UnetConfig::cifar10()),
        ("cifar10-cond.toml", 2e-4, 3.072, 3072.0, UnetConfig { num_labels: 10, ..UnetConfig::cifar10() }),
        ("cifar10-tdr.toml", 1e-4, 3.072, 3072.0, UnetConfig::cifar10()),
        ("celeba64.toml", 1e-4, 12.288, 12288.0, UnetConfig::celeba64()),
    ] {
        let file = ConfigFile::read(&recipe(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let train = file.train_over(TrainConfig::images()).unwrap();
        let expected = TrainConfig {
            steps: 500_000,
            batch_size: 128,
            lr,
            warmup_steps: 5000,
            lr_decay: LrDecay::Step { every: 200_000, factor: 0.1 },
            ema_decay: 0.9999,
            grad_clip: Some(grad_clip),
            ce_weight,
            min_snr: None,
            hflip: true,
            checkpoint_every: 5000,
            log_every: 100,
            sample_every: 5000,
            fid_every: 25_000,
            fid_samples: 10_000,
            ..TrainConfig::images()
        };
        assert_eq!(train, expected, "{name}");
        assert_eq!(file.backbone, Some(BackboneConfig::Unet(unet)), "{name}");
    }
}

/// The training settings of a run recorded in docs/results.md from a config file. Those runs
/// (binaries of 6659128 and c19edf2) predate the image defaults, so every field not in the
/// file then took the known-density default of its day. Each field is written out, so a field
/// added to `TrainConfig` later fails to compile here until someone says what the recorded runs
/// had for it.
fn recorded_run(steps: u64, lr: f64, ce_weight: f64, mse_weight: f64, sample_every: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 64,
        lr,
        warmup_steps: 100,
        lr_decay: LrDecay::Cosine,
        ema_decay: 0.999,
        grad_clip: Some(1.0),
        ce_weight,
        mse_weight,
        min_snr: None,
        low_levels: 0.0,
        level_strides: Vec::new(),
        seed: 0,
        checkpoint_every: 1000,
        log_every: 50,
        precision: Precision::F32,
        sample_every,
        label_dropout: 0.1,
        hflip: false,
        dequantize: false,
        cdl: None,
        init_from: None,
        fid_every: 0,
        fid_samples: 10_000,
    }
}

#[test]
fn the_recorded_configs_resolve_to_the_recorded_runs() {
    // Cube and digits data are [C, H, W]: the command line puts a config file over the image
    // defaults (Min-SNR 5, checkpoints every 500 steps), which the recorded runs did not have.
    let ablation_unet = UnetConfig {
        channels: 32,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        attention_resolutions: Vec::new(),
        dropout: 0.0,
        groups: 8,
        num_labels: 0,
        head_channels: 0,
        head_width: 0,
    };
    let cube =
        ConvNetConfig { channels: 16, channel_mult: vec![1], blocks: 1, groups: 4, num_labels: 0, fourier: Vec::new() };
    // docs/results.md §1 (Fig. 3) and §5.4 (the ablations), in the files' own words.
    let cases = [
        ("cube.toml", None, ScheduleKind::Linear, BackboneConfig::ConvNet(cube), recorded_run(2000, 1e-3, 1.0, 1.0, 0)),
        (
            "ablation/both.toml",
            Some("digits"),
            ScheduleKind::Linear,
            BackboneConfig::Unet(ablation_unet.clone()),
            recorded_run(2000, 5e-4, 1.0, 1.0, 1000),
        ),
        (
            "ablation/ce-only.toml",
            Some("digits"),
            ScheduleKind::Linear,
            BackboneConfig::Unet(ablation_unet.clone()),
            recorded_run(2000, 5e-4, 1.0, 0.0, 1000),
        ),
        (
            "ablation/mse-only.toml",
            Some("digits"),
            ScheduleKind::Linear,
            BackboneConfig::Unet(ablation_unet.clone()),
            recorded_run(2000, 5e-4, 0.0, 1.0, 1000),
        ),
        (
            "ablation/tdr.toml",
            Some("digits"),
            ScheduleKind::Tdr,
            BackboneConfig::Unet(ablation_unet),
            recorded_run(2000, 5e-4, 1.0, 1.0, 1000),
        ),
    ];
    for (name, data, schedule, backbone, train) in cases {
        let file = ConfigFile::read(&recipe(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(file.train_over(TrainConfig::images()).unwrap(), train, "{name} over the image defaults");
        assert_eq!(file.train_over(TrainConfig::default()).unwrap(), train, "{name} over the other defaults");
        assert_eq!(file.data.as_deref(), data, "{name}");
        assert_eq!(
            (file.model, file.gaussian_base, file.base_per_class),
            (Some(ModelKind::Cdm), Some(false), None),
            "{name}"
        );
        assert_eq!(file.schedule, Some(ScheduleConfig::new(schedule, 1000)), "{name}");
        assert_eq!(file.backbone, Some(backbone), "{name}");
    }
}

#[test]
fn the_cube_config_trains_as_recorded_through_the_command_line() {
    // The command line picks the defaults by the data's shape; a smaller cube (3×8×8) keeps the
    // step short and is [C, H, W] like Fig. 3's.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = recipe("cube.toml");
    let args = ["train", "--config", config.to_str().unwrap(), "--data", "uniform:d=3x8x8,g=1", "--out"];
    let (ok, stderr) = cdm(&[&args[..], &[run.to_str().unwrap(), "--steps", "1", "--device", "cpu"]].concat());
    assert!(ok, "{stderr}");
    let saved = read_json(&run.join("config.json"));
    let expected = serde_json::to_value(TrainConfig { steps: 1, ..recorded_run(2000, 1e-3, 1.0, 1.0, 0) }).unwrap();
    assert_eq!(saved["train"], expected);
    assert_eq!(saved["model"]["kind"], "cdm");
    assert_eq!(saved["model"]["schedule"]["kind"], "linear");
    assert_eq!(saved["model"]["schedule"]["timesteps"], 1000);
    assert_eq!(
        saved["model"]["backbone"],
        serde_json::to_value(BackboneConfig::ConvNet(ConvNetConfig::cube())).unwrap()
    );
}

#[test]
fn false_switches_an_option_off_and_true_is_refused() {
    let path = Path::new("off.toml");
    let file = ConfigFile::parse("[train]\nmin_snr = false\ngrad_clip = false\n", path).unwrap();
    let train = file.train_over(TrainConfig::images()).unwrap();
    assert_eq!((train.min_snr, train.grad_clip), (None, None));
    let err = ConfigFile::parse("[train]\nmin_snr = true\n", path).unwrap_err().to_string();
    assert!(err.contains("off.toml") && err.contains("false to switch it off"), "{err}");
}

/// Official-layout CIFAR-10 batches of `per_batch` records each, labels cycling 0..=9.
fn tiny_cifar10(dir: &Path, per_batch: usize) {
    let names = (1..=5).map(|i| format!("data_batch_{i}.bin")).chain(["test_batch.bin".to_string()]);
    for (b, name) in names.enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_batch {
            bytes.push(((b * per_batch + i) % 10) as u8);
            bytes.extend((0..3072).map(|p| ((p * 7 + i * 13 + b) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn the_cifar10_recipe_reaches_config_json_and_stays_off_through_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    std::fs::create_dir_all(&data).unwrap();
    tiny_cifar10(&data, 2);
    let run = dir.path().join("run");
    let (spec, run_arg) = (format!("cifar10:{}", data.display()), run.to_str().unwrap().to_string());
    let config = recipe("cifar10.toml");
    // The paper's UNet, one step at batch 2: the recipe as built, not a smaller stand-in.
    let args = ["train", "--config", config.to_str().unwrap(), "--data", &spec, "--out", &run_arg];
    let (ok, stderr) =
        cdm(&[&args[..], &["--steps", "1", "--batch", "2", "--fid-every", "0", "--device", "cpu"]].concat());
    assert!(ok, "{stderr}");
    let saved = read_json(&run.join("config.json"));
    let file = ConfigFile::read(&config).unwrap();
    let table = file.train.as_ref().unwrap().as_object().unwrap();
    for (key, value) in table {
        let got = &saved["train"][key];
        let overridden = ["steps", "batch_size", "fid_every"].contains(&key.as_str());
        match value {
            _ if overridden => {}
            serde_json::Value::Bool(false) if matches!(key.as_str(), "min_snr" | "grad_clip") => {
                assert!(got.is_null(), "train.{key}: {got}")
            }
            _ => assert_eq!(got, value, "train.{key}"),
        }
    }
    assert_eq!(saved["model"]["backbone"]["head_width"], 512);
    assert_eq!(saved["model"]["schedule"]["kind"], "linear");

    // Resumed from the run alone, with no config file: still off.
    let (ok, stderr) = cdm(&["train", "--out", &run_arg, "--steps", "2", "--device", "cpu"]);
    assert!(ok, "{stderr}");
    let resumed = read_json(&run.join("config.json"));
    assert!(resumed["train"]["min_snr"].is_null(), "{}", resumed["train"]);
    assert_eq!(resumed["train"]["steps"], 2);
}

#[test]
fn training_curves_are_drawn_from_the_log_and_a_bad_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lines = [
        r#"{"step":100,"loss":3.5,"mse":3.0,"seconds":20.0}"#,
        r#"{"step":200,"loss":2.5,"mse":2.0,"seconds":40.0,"fid":300.0}"#,
        r#"{"step":300,"loss":2.0,"mse":1.5,"seconds":60.0,"fid":250.0}"#,
    ];
    std::fs::write(run.join("log.jsonl"), lines.join("\n") + "\n").unwrap();
    let prefix = dir.path().join("curves");
    let (ok, stderr) = cdm(&["plot", "training", run.to_str().unwrap(), "--out", prefix.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for suffix in ["_loss.png", "_fid_steps.png", "_fid_hours.png"] {
        let path = dir.path().join(format!("curves{suffix}"));
        assert!(image::open(&path).is_ok(), "{} not written", path.display());
    }
    std::fs::write(run.join("log.jsonl"), format!("{}\nnot json\n", lines[0])).unwrap();
    let (ok, stderr) = cdm(&["plot", "training", run.to_str().unwrap(), "--out", prefix.to_str().unwrap()]);
    assert!(!ok && stderr.contains("log.jsonl: line 2 is not a logged step"), "{stderr}");
}

#[test]
fn a_setting_is_a_number_or_off_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, stderr) = cdm(&["train", "--data", "gmm2d", "--out", out.to_str().unwrap(), "--min-snr", "of"]);
    assert!(!ok && stderr.contains("expected a number or 'off', got 'of'"), "{stderr}");
    let args = ["train", "--data", "gmm2d", "--out", out.to_str().unwrap(), "--steps", "1", "--batch", "8"];
    let (ok, stderr) = cdm(&[&args[..], &["--grad-clip", "off", "--min-snr", "5", "--device", "cpu"]].concat());
    assert!(ok, "{stderr}");
    let saved = read_json(&out.join("config.json"));
    assert!(saved["train"]["grad_clip"].is_null() && saved["train"]["min_snr"] == 5.0, "{}", saved["train"]);
}
