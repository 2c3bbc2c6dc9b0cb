//! `cdm bench`: [`cdm::bench`] from the command line, its ranks started here with --nproc.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use cdm::bench::{BenchSize, Plan};
use cdm::distributed::Launch;
use cdm::train::Precision;

use super::{check_count, DeviceArg};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "mlp2d")]
    size: BenchSize,
    /// Where both sides run; PyTorch gets the same device.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Batch size instead of the size's own.
    #[arg(long)]
    batch: Option<usize>,
    /// Timed steps per round (after 3 untimed ones).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Rounds, each timing Rust and PyTorch (Rust first in even rounds, PyTorch in odd ones).
    #[arg(long, default_value_t = 3, value_parser = super::positive::<usize>)]
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
    /// Also split Rust's training step into phases (forward; the CDM's input gradient with its
    /// graph; loss and backward to the weights; the rest: optimiser, EMA, batch).
    #[arg(long)]
    profile: bool,
    /// Precision of both sides: f32, f64, or bf16 (f32 weights, bfloat16 autocast).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Peak TFLOP/s the achieved rate is a share of; on CUDA 790 (an H200's dense bf16 matrix
    /// product) unless given, on a CPU none.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also time PyTorch's best eager setting (bf16 autocast and channels-last); always on CUDA.
    #[arg(long)]
    reference_best: bool,
    /// Time Rust's step as N data-parallel ranks on this host, the size's batch split among
    /// them (with --no-reference), and the gradient all-reduce alone; rank 0 reports.
    #[arg(long, value_name = "N", value_parser = super::positive::<usize>)]
    nproc: Option<usize>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    if args.nproc.is_some() && launch.is_none() && !args.no_reference {
        bail!("--nproc times Rust's ranks alone: add --no-reference");
    }
    if super::start_ranks(args.nproc, launch.as_ref(), false)? {
        return Ok(());
    }
    let device = match &launch {
        Some(launch) => launch.device(args.device.device()?),
        None => args.device.device()?,
    };
    let group = super::join(launch.as_ref(), Some(device))?.map(Arc::new);
    let plan = Plan {
        size: args.size,
        batch: args.batch,
        steps: args.steps,
        rounds: args.rounds,
        python: args.python,
        script: args.script,
        reference: !args.no_reference,
        profile: args.profile,
        precision: args.precision,
        peak_tflops: args.peak_tflops,
        reference_best: args.reference_best,
    };
    let config = cdm::bench::run_config(args.size, args.batch);
    check_count("--batch", config.train.batch_size, &config.model.data_shape)?;
    let report = cdm::bench::run(&plan, device, group.as_ref())?;
    // Rank 0 alone speaks for a job.
    if group.is_none_or(|g| g.rank() == 0) {
        println!("{report}");
    }
    Ok(())
}
