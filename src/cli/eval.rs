//! `cdm eval`: one checkpoint measured the way the paper measures it, written as a report
//! folder (report.json, report.md, PNG plots, per-image values as .npy) by
//! [`cdm::eval::evaluate`]. `--only` runs any one metric on its own; `--compare` adds a second
//! run on the same data (a DDM against a CDM).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use cdm::data::DATA_SPECS;
use cdm::distributed::Launch;
use cdm::eval::{evaluate_in_job, Metric, Plan};
use cdm::loss::ZetaPrior;
use cdm::run_lock::RunLock;

use super::check_count;
use super::infer::CkptArgs;
use super::sampling::SamplingArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    /// Report folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, help = format!("Data to evaluate on (default: the training data's test split where it has one): {DATA_SPECS}"))]
    data: Option<String>,
    /// Metrics to compute (default: every one that applies to the model).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Metric>,
    /// Images (or held-out points) for likelihood, denoising, diagnostics and OOD.
    #[arg(long, default_value_t = 2000, value_parser = super::positive::<usize>)]
    n: usize,
    /// A second run trained on the same data, e.g. the DDM to compare a CDM with.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Network evaluations per image for the DDM's I-MMSE likelihood (the largest is its NLL).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16, 32, 64, 128], value_parser = super::positive::<usize>)]
    evaluations: Vec<usize>,
    /// Images for the likelihood-against-evaluations curve.
    #[arg(long, default_value_t = 200, value_parser = super::positive::<usize>)]
    nfe_images: usize,
    /// Samples for FID (0: no FID).
    #[arg(long, default_value_t = 1000)]
    fid_samples: usize,
    /// Training images for the FID reference statistics (computed once, then cached).
    #[arg(long, default_value_t = 10_000, value_parser = super::positive::<usize>)]
    fid_reference: usize,
    /// How samples are drawn (FID, MMD, sampler drift); --seed also seeds every random draw of
    /// the evaluation.
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Other data to tell apart from --data (OOD), e.g. fashion-mnist:split=test; repeat the
    /// flag for several.
    #[arg(long)]
    ood: Vec<String>,
    /// Bandwidth h of the MMD's Gaussian kernel exp(−|a − b|²/(2h²)).
    #[arg(long, default_value_t = 0.2, value_parser = super::positive_number)]
    mmd_bandwidth: f64,
    /// Where ζ is drawn for the noise classifier (default: as the run was trained with CDL, else
    /// logistic), so that runs with and without the term are scored alike.
    #[arg(long, value_enum)]
    cdl_zeta: Option<ZetaPrior>,
    /// Ranks to start on this host that share the bits/dim and the FID samples (the same
    /// figures as one process); a launcher's environment (torchrun's RANK, WORLD_SIZE,
    /// LOCAL_RANK, MASTER_ADDR, MASTER_PORT) starts a rank without it.
    #[arg(long, value_name = "N", value_parser = super::positive::<usize>)]
    nproc: Option<usize>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let launch = Launch::from_env()?;
    if super::start_ranks(args.nproc, launch.as_ref(), false)? {
        return Ok(());
    }
    let device = launch.as_ref().map(|l| args.ckpt.device().map(|d| l.device(d))).transpose()?;
    let group = super::join(launch.as_ref(), device)?;
    let writes = group.as_ref().is_none_or(|g| g.rank() == 0);
    // One writer per report folder, as per run folder; held until the report is written.
    let _lock = match writes {
        true => Some(RunLock::acquire(&args.out).with_context(|| format!("--out {}", args.out.display()))?),
        false => None,
    };
    let model = args.ckpt.load_on(device)?;
    let compare = args.compare.as_ref().map(|dir| args.ckpt.load_from(dir, device)).transpose()?;
    let shape = model.model.data_shape();
    check_count("--n", args.n, shape)?;
    check_count("--fid-samples", args.fid_samples, shape)?;
    check_count("--fid-reference", args.fid_reference, shape)?;
    let plan = Plan {
        only: args.only,
        data: args.data,
        n: args.n,
        evaluations: args.evaluations,
        nfe_images: args.nfe_images,
        fid_samples: args.fid_samples,
        fid_reference: args.fid_reference,
        sampling: args.sampling.options(),
        ood: args.ood,
        mmd_bandwidth: args.mmd_bandwidth,
        cdl_zeta: args.cdl_zeta,
        batch: args.ckpt.batch,
    };
    let bar = if writes { super::progress_bar(0, "eval") } else { indicatif::ProgressBar::hidden() };
    let progress = super::follow(&bar);
    let report = evaluate_in_job(&model, compare.as_ref(), &plan, &args.out, Some(&progress), group.as_ref());
    bar.finish_and_clear();
    let report = report?;
    if writes {
        report.write(&args.out)?;
        println!("{}", report.markdown());
        println!("report written to {}", args.out.display());
    }
    Ok(())
}
