//! `cdm data`: fetch a data set into the cache now, or time the training-batch loader alone.
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tch::Kind;

use cdm::data::loader::{throughput, BatchOptions};
use cdm::data::{Dataset, DATA_SPECS};

use super::{positive, spinner, DeviceArg};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Fetch (and convert) a data set into the per-user cache now, and say where it is.
    Fetch {
        /// Data spec: a fetched set (mnist, fashion-mnist, digits, cifar10) or any other.
        #[arg(value_name = "SPEC", help = format!("Data spec: {DATA_SPECS}"))]
        spec: String,
    },
    /// Training batches per second from the loader alone (no model), as `cdm train` draws
    /// them: random rows, augmentation, conversion to Float on the device.
    Throughput(ThroughputArgs),
}

#[derive(Args)]
struct ThroughputArgs {
    #[arg(value_name = "SPEC", help = format!("Data spec: {DATA_SPECS}"))]
    spec: String,
    /// Images per batch.
    #[arg(long, default_value_t = 128, value_parser = positive::<usize>)]
    batch: usize,
    /// Flip each image left-right with probability 1/2.
    #[arg(long)]
    hflip: bool,
    /// Uniform dequantization of the 8-bit pixels.
    #[arg(long)]
    dequantize: bool,
    /// Batches to time (after one of warm-up).
    #[arg(long, default_value_t = 200, value_parser = positive::<usize>)]
    batches: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Fetch { spec } => {
            let started = std::time::Instant::now();
            let wait = spinner(format!("opening {spec}"));
            let data = Dataset::open(&spec).with_context(|| format!("data {spec}"));
            wait.finish_and_clear();
            let data = data?;
            println!("{spec}: {} ({:.1} s)", data.describe(&spec), started.elapsed().as_secs_f64());
            println!("cached under {}", cdm::cache::root()?.join("data").display());
            Ok(())
        }
        DataCommand::Throughput(args) => {
            let data = Dataset::open(&args.spec).with_context(|| format!("data {}", args.spec))?;
            let options = BatchOptions {
                shard: cdm::distributed::Shard::whole(args.batch),
                seed: 0,
                hflip: args.hflip,
                dequantize: args.dequantize,
                null_label: data.num_labels().map(|n| n as i64),
                label_dropout: 0.1,
                kind: Kind::Float,
                device: args.device.device()?,
            };
            let rate = throughput(&data, &options, args.batches as u64)?;
            println!(
                "{}: {rate:.0} images/s ({} batches of {}{}{}, Float on {:?})",
                args.spec,
                args.batches,
                args.batch,
                if args.hflip { ", hflip" } else { "" },
                if args.dequantize { ", dequantize" } else { "" },
                options.device
            );
            Ok(())
        }
    }
}
