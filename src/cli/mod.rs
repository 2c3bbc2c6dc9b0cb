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
pub mod sampling;
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

/// Training stopped by SIGINT or SIGTERM after writing a checkpoint: the binary says so and
/// exits with 128 + the signal's number, as a shell reports a process the signal ended.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub step: u64,
    pub out: std::path::PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == libc::SIGINT { "SIGINT (Ctrl-C)" } else { "SIGTERM" };
        write!(
            f,
            "stopped by {name} after step {}, with a checkpoint of it in {}; `cdm train --out {1}` resumes it",
            self.step,
            self.out.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// Checks that the count `n` given by `flag` of points shaped `point_shape` fits in memory
/// ([`cdm::data::check_held`]), as a [`Usage`] error.
pub fn check_count(flag: &str, n: usize, point_shape: &[i64]) -> Result<()> {
    cdm::data::check_held(flag, n, point_shape).map_err(|e| Usage(e).into())
}

/// Parses a count that must be at least 1 (`--n 0` would leave nothing to compute).
pub fn positive<T>(s: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    match s.parse::<T>() {
        Ok(n) if n != T::default() => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a positive finite number (a bandwidth, a width).
pub fn positive_number(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        Ok(_) => Err("must be a positive finite number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks an output file before any work: its extension is one of `extensions` and its folder
/// exists, so that a long command does not fail only when it writes.
pub fn output_file(path: &std::path::Path, extensions: &[&str]) -> std::result::Result<(), String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !extensions.contains(&ext) {
        let list: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
        return Err(format!("{}: expected a {} file", path.display(), list.join(" or ")));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(format!("{}: the folder {} does not exist", path.display(), dir.display())),
        _ => Ok(()),
    }
}

/// Parses an output path that must be a PNG file in an existing folder.
pub fn png_file(s: &str) -> std::result::Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(s);
    output_file(&path, &["png"]).map(|()| path)
}

/// Parses an output path that must be a `.npy` file in an existing folder.
pub fn npy_file(s: &str) -> std::result::Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(s);
    output_file(&path, &["npy"]).map(|()| path)
}

/// How long the ranks started by --nproc have to stop on their own once one has failed.
const RANK_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// With `--nproc N` (N > 1) and no launcher's environment (`launch`), runs this same command
/// line as N ranks on this host, the variables it gives each telling it which rank it is, and
/// returns true once they have ended. With `wait_on_interrupt`, Ctrl-C leaves this process
/// waiting while the ranks stop on their own (training saves first).
pub fn start_ranks(
    nproc: Option<usize>,
    launch: Option<&cdm::distributed::Launch>,
    wait_on_interrupt: bool,
) -> Result<bool> {
    let Some(n) = nproc.filter(|&n| n > 1 && launch.is_none()) else { return Ok(false) };
    let program = std::env::current_exe().context("finding this program to start the ranks")?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    tracing::info!("starting {n} ranks on this host");
    if wait_on_interrupt {
        cdm::signals::stop_on_interrupt().context("installing the Ctrl-C and SIGTERM handlers")?;
    }
    cdm::distributed::spawn_local(&program, &argv, n, RANK_GRACE)?;
    Ok(true)
}

/// This rank's process group, where a launcher's environment (`launch`) makes this process one
/// rank of a job, for a rank computing on `device`; the collectives wait c10d's default time.
pub fn join(
    launch: Option<&cdm::distributed::Launch>,
    device: Option<Device>,
) -> Result<Option<cdm::distributed::ProcessGroup>> {
    let Some(launch) = launch else { return Ok(None) };
    let device = device.unwrap_or(Device::Cpu);
    Ok(Some(cdm::distributed::ProcessGroup::join(launch, device, cdm::distributed::DEFAULT_TIMEOUT)?))
}

/// A spinner on stderr for work of unknown length (opening data, building a model).
pub fn spinner(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// The library's progress callback (done, in all) shown on `bar`.
pub fn follow(bar: &indicatif::ProgressBar) -> impl Fn(u64, u64) + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
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
