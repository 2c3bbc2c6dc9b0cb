//! `cdm bench`: one CDM training step in Rust against the same step in PyTorch
//! (`bench/reference.py`), alternated in rounds so both see the same machine load.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tch::Device;

use cdm::model::{ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, ConvNetConfig, MlpConfig};
use cdm::schedule::ScheduleConfig;
use cdm::train::{LrDecay, RunConfig, TrainConfig, Trainer};

/// The fixed sizes benchmarked.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BenchSize {
    /// 2-D points, MLP 256 wide with 3 blocks, batch 1024, T = 1000.
    Mlp2d,
    /// Uniform cube 3×32×32, ConvNet 16 channels with 1 block, batch 64, T = 1000 (the Fig. 3 runs).
    Cube,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "mlp2d")]
    size: BenchSize,
    /// Timed steps per round (after 3 untimed ones).
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Rounds, each timing Rust then PyTorch.
    #[arg(long, default_value_t = 3)]
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
    };
    RunConfig {
        data: data.into(),
        model: ModelConfig { kind: ModelKind::Cdm, schedule: ScheduleConfig::default(), backbone, data_shape },
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

fn time_rust(size: BenchSize, steps: u64) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("cdm-bench-{}", std::process::id()));
    let mut trainer = Trainer::open(&dir, run_config(size), Device::Cpu)?;
    trainer.run_until(3, &mut |_| {})?;
    let mut last = Instant::now();
    let mut times = Vec::new();
    trainer.run_until(3 + steps, &mut |_| {
        times.push(last.elapsed().as_secs_f64() * 1e3);
        last = Instant::now();
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(median(times))
}

fn time_reference(args: &BenchArgs) -> Result<(f64, String)> {
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
    let ms = report["median_ms"].as_f64().context("reference output lacks median_ms")?;
    Ok((ms, report["torch"].as_str().unwrap_or("?").to_string()))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut rust, mut torch, mut version) = (Vec::new(), Vec::new(), String::new());
    for round in 0..args.rounds.max(1) {
        rust.push(time_rust(args.size, args.steps)?);
        if !args.no_reference {
            let (ms, v) = time_reference(&args)?;
            torch.push(ms);
            version = v;
        }
        eprintln!(
            "round {round}: rust {:.1} ms{}",
            rust[round],
            torch.last().map_or(String::new(), |t| format!(", pytorch {t:.1} ms"))
        );
    }
    let rust_ms = median(rust);
    let size = match args.size {
        BenchSize::Mlp2d => "mlp2d",
        BenchSize::Cube => "cube",
    };
    let mut report = json!({"size": size, "threads": tch::get_num_threads(), "rust_ms_per_step": rust_ms});
    if !torch.is_empty() {
        let torch_ms = median(torch);
        report["pytorch_ms_per_step"] = json!(torch_ms);
        report["pytorch_version"] = json!(version);
        report["rust_over_pytorch"] = json!(rust_ms / torch_ms);
    }
    println!("{report}");
    Ok(())
}
