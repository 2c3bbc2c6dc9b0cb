//! `cdm fid`: the FID between a set of images and a data set's cached reference statistics,
//! for samples drawn elsewhere (another host, another program) and brought as files.
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use cdm::data::{Dataset, DATA_SPECS};
use cdm::metrics::fid::{reference_stats, Inception};
use cdm::metrics::frechet_distance;

use super::DeviceArg;

#[derive(Args)]
pub struct FidArgs {
    #[arg(long, help = format!("The images to score, all of them, e.g. folder:DIR: {DATA_SPECS}"))]
    samples: String,
    /// The data the samples should look like (its statistics are computed once, then cached).
    #[arg(long)]
    reference: String,
    /// Images of --reference in its statistics (its first N).
    #[arg(long, default_value_t = 50_000, value_parser = super::positive::<usize>)]
    reference_n: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

pub fn run(args: FidArgs) -> Result<()> {
    let inception = Inception::load(args.device.device()?)?;
    let data = Dataset::open(&args.samples).with_context(|| format!("--samples {}", args.samples))?;
    if matches!(data, Dataset::Known(_)) || data.shape().len() != 3 {
        bail!("--samples {}: expected a set of images on disk", args.samples);
    }
    let samples = data.first_points(usize::MAX, 0);
    let reference = reference_stats(&inception, &args.reference, args.reference_n)
        .with_context(|| format!("--reference {}", args.reference))?;
    let fid = frechet_distance(&reference, &inception.stats(&samples, 50)?)?;
    let report = json!({
        "fid": fid, "samples": args.samples, "n": samples.size()[0],
        "reference": args.reference, "reference_images": reference.n,
    });
    println!("{report}");
    Ok(())
}
