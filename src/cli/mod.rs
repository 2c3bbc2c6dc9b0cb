//! One file per command group; shared flags live here.
use anyhow::{Context, Result};
use cdm::device::{choose, Request};
use tch::Device;

pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod fid;
pub mod infer;
pub mod plot;
pub mod train;

/// Where tensors live.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else CPU (stderr says which, and why not CUDA).
    Auto,
    Cpu,
    /// CUDA, or an error saying why it cannot be used.
    Cuda,
}

impl DeviceArg {
    /// The device to use; says on stderr which one and why.
    pub fn device(self) -> Result<Device> {
        let choice = choose(self.request()).context("--device cuda")?;
        tracing::info!("{}", choice.reason);
        Ok(choice.device)
    }

    fn request(self) -> Request {
        match self {
            DeviceArg::Auto => Request::Auto,
            DeviceArg::Cpu => Request::Cpu,
            DeviceArg::Cuda => Request::Cuda,
        }
    }
}

/// A mistake in the command line found only once the data's shape is known (a count too large
/// to hold): the binary exits with code 2, as for the usage errors clap finds.
#[derive(Debug)]
pub struct Usage(pub cdm::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Usage {}

/// Checks that the count `n` given by `flag` of points shaped `point_shape` fits in memory
/// ([`cdm::data::check_held`]), as a [`Usage`] error.
pub fn check_count(flag: &str, n: usize, point_shape: &[i64]) -> Result<()> {
    cdm::data::check_held(flag, n, point_shape).map_err(|e| Usage(e).into())
}

/// Parses a count that must be at least 1 (`--n 0` would leave nothing to compute).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A spinner on stderr for work of unknown length (opening data, building a model).
pub fn spinner(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// A progress bar with rate and ETA on stderr.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
