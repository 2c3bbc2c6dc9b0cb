//! `cdm bench`: one training step and one sampling step (one ε̂ for the batch) in Rust against
//! the same steps in PyTorch (`bench/reference.py`), alternated in rounds so both see the same
//! machine load.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use cdm::model::{ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, ConvNetConfig, MlpConfig, UnetConfig};
use cdm::rng::Rng;
use cdm::schedule::ScheduleConfig;
use cdm::train::{LrDecay, RunConfig, TrainConfig, Trainer};

/// The fixed sizes benchmarked.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BenchSize {
    /// 2-D points, MLP 256 wide with 3 blocks, batch 1024, T = 1000.
    Mlp2d,
    /// Uniform cube 3×32×32, ConvNet 16 channels with 1 block, batch 64, T = 1000 (the Fig. 3 runs).
    Cube,
    /// 1×28×28 (MNIST's shape), tiny UNet as a CDM, batch 32, T = 1000.
    UnetCdm,
    /// The same UNet as a DDM.
    UnetDdm,
}

impl BenchSize {
    fn name(self) -> &'static str {
        match self {
            BenchSize::Mlp2d => "mlp2d",
            BenchSize::Cube => "cube",
            BenchSize::UnetCdm => "unet-cdm",
            BenchSize::UnetDdm => "unet-ddm",
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "mlp2d")]
    size: BenchSize,
    /// Timed steps per round (after 3 untimed ones).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Rounds, each timing Rust then PyTorch.
    #[arg(long, default_value_t = 3, value_parser = super::positive)]
    rounds: usize,
    /// Python interpreter that imports torch 2.11 (see `make bench`).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The reference script.
    #[arg(long, default_value = "bench/reference.py")]
    script: PathBuf,
    /// Time Rust only.
    #[arg(long)]
    no_reference: bool,
}

fn run_config(size: BenchSize) -> RunConfig {
    let (data, backbone, data_shape, batch_size) = match size {
        BenchSize::Mlp2d => {
            ("gmm2d", BackboneConfig::Mlp(MlpConfig { hidden: 256, blocks: 3, num_labels: 0 }), vec![2], 1024)
        }
        BenchSize::Cube => {
            ("uniform:d=3x32x32,g=0.5", BackboneConfig::ConvNet(ConvNetConfig::cube()), vec![3, 32, 32], 64)
        }
        BenchSize::UnetCdm | BenchSize::UnetDdm => {
            ("uniform:d=1x28x28,g=2", BackboneConfig::Unet(UnetConfig::tiny()), vec![1, 28, 28], 32)
        }
    };
    let kind = if matches!(size, BenchSize::UnetDdm) { ModelKind::Ddm } else { ModelKind::Cdm };
    RunConfig {
        data: data.into(),
        model: ModelConfig {
            kind,
            schedule: ScheduleConfig::default(),
            backbone,
            data_shape,
            gaussian_base: false,
            base_per_class: false,
        },
        // Never reaches a checkpoint or log line: only steps are timed.
        train: TrainConfig {
            steps: u64::MAX,
            batch_size,
            lr_decay: LrDecay::Constant,
            checkpoint_every: u64::MAX,
            log_every: u64::MAX,
            ..Default::default()
        },
    }
}

/// The PyTorch script's settings for the same size.
fn reference_config(size: BenchSize, steps: u64) -> serde_json::Value {
    let common = json!({"timesteps": 1000, "ce_weight": 1.0, "warmup": 3, "steps": steps});
    let specific = match size {
        BenchSize::Mlp2d => {
            json!({"backbone": "mlp", "shape": [2], "hidden": 256, "blocks": 3, "batch": 1024, "width": 1.0})
        }
        BenchSize::Cube => {
            json!({"backbone": "convnet", "shape": [3, 32, 32], "channels": 16, "blocks": 1, "groups": 4, "batch": 64, "width": 0.5})
        }
        BenchSize::UnetCdm | BenchSize::UnetDdm => json!({
            "backbone": "unet", "model": if matches!(size, BenchSize::UnetDdm) { "ddm" } else { "cdm" },
            "shape": [1, 28, 28], "channels": 32, "mult": [1, 2, 2], "blocks": 1, "groups": 8, "batch": 32, "width": 2.0
        }),
    };
    let mut merged = common;
    if let (Some(m), Some(s)) = (merged.as_object_mut(), specific.as_object()) {
        m.extend(s.clone());
    }
    merged
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of one step: (training, sampling).
type Timing = (f64, f64);

fn time_rust(size: BenchSize, steps: u64) -> Result<Timing> {
    let config = run_config(size);
    let dir = std::env::temp_dir().join(format!("cdm-bench-{}", std::process::id()));
    let mut trainer = Trainer::open(&dir, config.clone(), Device::Cpu)?;
    trainer.run_until(3, &mut |_| {})?;
    let mut last = Instant::now();
    let mut train = Vec::new();
    trainer.run_until(3 + steps, &mut |_| {
        train.push(last.elapsed().as_secs_f64() * 1e3);
        last = Instant::now();
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    let shape = [&[config.train.batch_size as i64][..], &config.model.data_shape].concat();
    let x = Rng::new(0).normal(&shape, Kind::Float);
    let level = Tensor::full([shape[0]], 500, (Kind::Int64, Device::Cpu));
    let mut sample = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        let eps = tch::no_grad(|| trainer.model().eps(&x, &level, None))?;
        eps.sum(Kind::Double).double_value(&[]);
        sample.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(train), median(sample)))
}

fn time_reference(args: &BenchArgs) -> Result<(Timing, String)> {
    let out = Command::new(&args.python)
        .arg(&args.script)
        .arg(reference_config(args.size, args.steps).to_string())
        .output()
        .with_context(|| format!("running {} {}", args.python, args.script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed (does it import torch 2.11? try `make bench`):\n{}",
            args.script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("reference output is not JSON")?;
    let field = |name: &str| report[name].as_f64().with_context(|| format!("reference output lacks {name}"));
    Ok(((field("median_ms")?, field("sample_ms")?), report["torch"].as_str().unwrap_or("?").to_string()))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut rust, mut torch, mut version) = (Vec::new(), Vec::new(), String::new());
    for round in 0..args.rounds.max(1) {
        rust.push(time_rust(args.size, args.steps)?);
        if !args.no_reference {
            let (timing, v) = time_reference(&args)?;
            torch.push(timing);
            version = v;
        }
        let show = |(train, sample): Timing| format!("train {train:.1} ms, sample {sample:.1} ms");
        eprintln!(
            "round {round}: rust {}{}",
            show(rust[round]),
            torch.last().map_or(String::new(), |&t| format!("; pytorch {}", show(t)))
        );
    }
    let medians = |v: &[Timing]| (median(v.iter().map(|t| t.0).collect()), median(v.iter().map(|t| t.1).collect()));
    let (rust_train, rust_sample) = medians(&rust);
    let mut report = json!({
        "size": args.size.name(), "threads": tch::get_num_threads(),
        "rust_ms_per_step": rust_train, "rust_ms_per_sample_step": rust_sample,
    });
    if !torch.is_empty() {
        let (torch_train, torch_sample) = medians(&torch);
        report["pytorch_ms_per_step"] = json!(torch_train);
        report["pytorch_ms_per_sample_step"] = json!(torch_sample);
        report["pytorch_version"] = json!(version);
        report["rust_over_pytorch"] = json!(rust_train / torch_train);
        report["rust_over_pytorch_sampling"] = json!(rust_sample / torch_sample);
    }
    println!("{report}");
    Ok(())
}
