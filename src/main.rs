//! The `cdm` command line: train, evaluate and sample classification diffusion models.
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "cdm",
    version,
    about = "Classification diffusion models: train, sample, denoise, and exact one-pass likelihood"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a CDM on a data spec; resumes if --out already holds the run.
    ///
    /// Defaults fit the data. Image data ([C, H, W]: mnist, fashion-mnist, digits, cifar10,
    /// folder, image .npy) trains the tiny UNet with the recipe of `make mnist`: batch 32,
    /// lr 4e-4, Min-SNR 5, 2000 steps, a checkpoint and a sample grid every 500 steps. Other
    /// data trains the MLP with batch 1024, lr 1e-3 and 5000 steps. Flags and --config override
    /// them; every setting is stored in OUT/config.json.
    Train(cli::train::TrainArgs),
    /// Exact log-likelihood per sample in one forward pass (Theorem 3.2).
    Nll(cli::infer::NllArgs),
    /// MMSE denoising E[x0 | x_t] from the classifier's input gradient (Theorem 3.1).
    Denoise(cli::infer::DenoiseArgs),
    /// The denoiser's MSE against the exact MMSE, on built-in data with a known posterior mean.
    Mmse(cli::infer::MmseArgs),
    /// A report folder for a checkpoint: bits/dim, FID, denoising curves, classifier
    /// diagnostics, OOD detection (each also alone with --only).
    Eval(cli::eval::EvalArgs),
    /// FID of a set of images (e.g. samples brought from another host) against a data set.
    Fid(cli::fid::FidArgs),
    /// Generate samples with DDPM, DDIM, DPM-Solver-2M or DPM-Solver++(2M).
    Sample(cli::infer::SampleArgs),
    /// Pictures: learned against exact log-density (2-D), or the paper's Fig. 3 for cubes.
    Plot(cli::plot::PlotArgs),
    /// Time one training step against the same step in PyTorch.
    Bench(cli::bench::BenchArgs),
    /// The device --device picks on this host, and why not CUDA when it cannot.
    Device(cli::device::DeviceArgs),
    /// Data sets: fetch one into the cache now, or time the training-batch loader alone.
    Data(cli::data::DataArgs),
}

/// `cmd` and every subcommand in it taking `--lr -1` as a value (then refused for its sign,
/// naming the flag) rather than as an unknown flag `-1`.
fn allow_negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.allow_negative_numbers(true).mut_subcommands(allow_negative_numbers)
}

fn main() -> std::process::ExitCode {
    // The ranks of a data-parallel job but the first say only what goes wrong.
    let quiet = std::env::var("RANK").is_ok_and(|rank| rank.trim() != "0");
    let level = if quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let matches = allow_negative_numbers(Cli::command()).get_matches();
    let command = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()).command;
    if let Err(err) = cdm::signals::fail_writes_past_file_limit() {
        tracing::warn!("a write past `ulimit -f` will end the process without a message: {err}");
    }
    // Before anything touches libtorch: it looks up its CUDA backend only once (cdm::device).
    let _ = cdm::device::load_cuda();
    let result = match command {
        Command::Train(args) => cli::train::run(args),
        Command::Nll(args) => cli::infer::nll(args),
        Command::Denoise(args) => cli::infer::denoise(args),
        Command::Sample(args) => cli::infer::sample(args),
        Command::Mmse(args) => cli::infer::mmse(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Fid(args) => cli::fid::run(args),
        Command::Plot(args) => cli::plot::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Device(args) => cli::device::run(args),
        Command::Data(args) => cli::data::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if err.is::<cli::Interrupted>() => {
            eprintln!("{err}");
            let signal = err.downcast_ref::<cli::Interrupted>().map_or(libc::SIGINT, |i| i.signal);
            std::process::ExitCode::from(cdm::signals::exit_status(signal))
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.chain().any(|e| e.is::<cli::Usage>()) {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
