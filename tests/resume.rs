//! Checkpoints: a run stopped and resumed ends with exactly the weights of an uninterrupted
//! run, and a saved model reloads to identical logits.
mod common;

use cdm::checkpoint::load_model;
use cdm::model::ModelKind;
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::schedule::{Levels, LogSnrProposal, ScheduleConfig, ScheduleKind};
use cdm::train::{Precision, RunConfig, TrainConfig, Trainer};
use common::mlp_config;
use tch::{Device, Kind};

fn config(steps: u64) -> RunConfig {
    RunConfig {
        data: "gmm2d".into(),
        model: mlp_config(ModelKind::Cdm, 20, MlpConfig { hidden: 16, blocks: 2, ..MlpConfig::default() }, &[2]),
        train: TrainConfig {
            steps,
            batch_size: 32,
            checkpoint_every: 5,
            log_every: 1,
            precision: Precision::F64,
            warmup_steps: 3,
            ..Default::default()
        },
    }
}

fn weights(dir: &std::path::Path, ema: bool) -> Vec<(String, tch::Tensor)> {
    let mut vars: Vec<_> = load_model(dir, Device::Cpu, ema).unwrap().vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn resume_matches_an_uninterrupted_run() {
    resumes_exactly(&config);
}

/// The same with batches from the prefetching loader: 8-bit images held as bytes, flipped and
/// dequantized, labelled for a conditional model with label dropout.
#[test]
fn resume_matches_with_prefetched_image_batches() {
    let data = tempfile::tempdir().unwrap();
    write_cifar10_batches(data.path());
    let images = |steps: u64| {
        let plain = config(steps);
        RunConfig {
            data: format!("cifar10:{}", data.path().display()),
            model: mlp_config(
                ModelKind::Cdm,
                20,
                MlpConfig { hidden: 16, blocks: 1, ..MlpConfig::default() },
                &[3, 32, 32],
            ),
            train: TrainConfig { batch_size: 8, hflip: true, dequantize: true, ..plain.train },
        }
    };
    resumes_exactly(&images);
}

/// Five CIFAR-10 training files of four labelled images each.
fn write_cifar10_batches(dir: &std::path::Path) {
    for i in 1..=5u8 {
        let records: Vec<u8> =
            (0..4u8).flat_map(|r| [vec![r], (0..3072).map(|p| (p % 251) as u8 ^ (i * r)).collect()].concat()).collect();
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), records).unwrap();
    }
}

/// A run of 12 steps interrupted at step 7 and resumed ends with the weights of an
/// uninterrupted one.
fn resumes_exactly(config: &dyn Fn(u64) -> RunConfig) {
    let whole = tempfile::tempdir().unwrap();
    Trainer::open(whole.path(), config(12), Device::Cpu).unwrap().run(&mut |_| {}).unwrap();

    let split = tempfile::tempdir().unwrap();
    // Interrupted at step 7, after the checkpoint of step 5: the resumed run restarts at 5.
    Trainer::open(split.path(), config(12), Device::Cpu).unwrap().run_until(7, &mut |_| {}).unwrap();
    let mut resumed = Trainer::open(split.path(), config(12), Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 5);
    resumed.run(&mut |_| {}).unwrap();
    let log = std::fs::read_to_string(split.path().join("log.jsonl")).unwrap();
    let steps: Vec<u64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>(), "the log must read as one run");

    for ema in [false, true] {
        for ((name, a), (_, b)) in weights(whole.path(), ema).iter().zip(weights(split.path(), ema)) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert_eq!(diff, 0.0, "{name} (ema {ema}) differs");
        }
    }
}

/// A trainer asked for CUDA graphs where there are none (the CPU) still runs its steps through
/// the loss that a graph replays, drawn on the host and then computed (`Model::draw_loss`,
/// `Model::loss_given`, src/train/graphed.rs): bit for bit the plain loss's weights, for a CDM
/// with the low-level prior and level strides, a DDM on continuous levels with min-SNR weights,
/// and a CDM on labelled 8-bit images with label dropout and dequantization.
#[test]
fn the_graphable_step_trains_bit_for_bit_as_the_plain_one() {
    let data = tempfile::tempdir().unwrap();
    write_cifar10_batches(data.path());
    let strided = TrainConfig { low_levels: 0.5, level_strides: vec![1, 4], ..config(6).train };
    let mut continuous =
        mlp_config(ModelKind::Ddm, 50, MlpConfig { hidden: 16, blocks: 1, ..MlpConfig::default() }, &[2]);
    continuous.schedule = ScheduleConfig { kind: ScheduleKind::LogSnr, ..continuous.schedule };
    continuous.schedule.levels = Levels::Continuous(LogSnrProposal { loc: 2.0, scale: 1.5 });
    let images = mlp_config(
        ModelKind::Cdm,
        20,
        MlpConfig { hidden: 16, blocks: 1, num_labels: 10, ..MlpConfig::default() },
        &[3, 32, 32],
    );
    let cases = [
        RunConfig { train: strided, ..config(6) },
        RunConfig { model: continuous, train: TrainConfig { min_snr: Some(5.0), ..config(6).train }, ..config(6) },
        RunConfig {
            data: format!("cifar10:{}", data.path().display()),
            model: images,
            train: TrainConfig { batch_size: 4, dequantize: true, label_dropout: 0.5, ..config(6).train },
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        // Both runs start from one checkpoint: the weights' initialisation draws from libtorch's
        // global generator, which tests running beside this one draw from too.
        Trainer::open(dirs[0].path(), case.clone(), Device::Cpu).unwrap().save().unwrap();
        for file in ["config.json", "checkpoint.safetensors"] {
            std::fs::copy(dirs[0].path().join(file), dirs[1].path().join(file)).unwrap();
        }
        for (graphs, dir) in [false, true].into_iter().zip(&dirs) {
            let mut trainer = Trainer::open(dir.path(), case.clone(), Device::Cpu).unwrap();
            trainer.set_cuda_graphs(graphs);
            trainer.run(&mut |_| {}).unwrap();
            assert!(!trainer.steps_graphed(), "case {i}: no graphs on the CPU");
        }
        let [plain, graphable] = dirs.map(|d| weights(d.path(), false));
        for ((name, a), (_, b)) in plain.iter().zip(&graphable) {
            assert!(a.equal(b), "case {i}: {name} differs");
        }
    }
}

#[test]
fn saved_model_reloads_to_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::open(dir.path(), config(4), Device::Cpu).unwrap();
    trainer.run(&mut |_| {}).unwrap();
    let x = cdm::rng::Rng::new(0).normal(&[6, 2], Kind::Double);
    let before = trainer.model().classifier().unwrap().logits(&x, None, false).unwrap();
    let loaded = load_model(dir.path(), Device::Cpu, false).unwrap();
    let after = loaded.model.classifier().unwrap().logits(&x, None, false).unwrap();
    assert_eq!((before - after).abs().max().double_value(&[]), 0.0);
}

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(500);
    // An absurd learning rate in f32 overflows the weights within a few steps.
    cfg.train.lr = 1e30;
    cfg.train.precision = Precision::F32;
    cfg.train.grad_clip = None;
    cfg.train.warmup_steps = 0;
    cfg.train.checkpoint_every = 1;
    let err = Trainer::open(dir.path(), cfg, Device::Cpu).unwrap().run(&mut |_| {}).unwrap_err();
    let cdm::Error::NonFinite { step, .. } = err else { panic!("expected a non-finite error, got {err}") };
    let loaded = load_model(dir.path(), Device::Cpu, false).unwrap();
    assert_eq!(loaded.step + 1, step, "the error names the failing step; the checkpoint is the one before it");
    for (name, v) in loaded.vs.variables() {
        assert!(v.isfinite().all().int64_value(&[]) == 1, "{name} is not finite in the kept checkpoint");
    }
}

#[test]
fn resuming_from_the_command_line_needs_no_flag_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let train = |args: &[&str]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_cdm"))
            .args(["train", "--out", out])
            .args(args)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    };
    let first = ["--data", "gmm2d", "--steps", "2", "--lr", "3e-4", "--hidden", "16", "--timesteps", "20"];
    train(&[&first[..], &["--batch", "16", "--checkpoint-every", "1"]].concat());
    train(&["--steps", "3"]);
    let saved: RunConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!((saved.train.steps, saved.train.lr, saved.train.checkpoint_every), (3, 3e-4, 1));
    assert_eq!((saved.model.schedule.timesteps, saved.train.batch_size), (20, 16));
    assert!(matches!(saved.model.backbone, BackboneConfig::Mlp(MlpConfig { hidden: 16, .. })));
}
