//! The library's one error type.
use std::path::PathBuf;

/// Everything that can go wrong in the library; the CLI adds context with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor has the wrong shape; the message names the tensor and what was expected.
    #[error("shape: {0}")]
    Shape(String),
    /// An option or config field is out of range.
    #[error("config: {0}")]
    Config(String),
    /// A data file or data spec is unusable.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is missing, corrupt or does not match its config.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// CUDA was asked for but cannot be used; says why (the missing library, or no device).
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// Training produced a non-finite loss, gradient norm or weight at `step` (1-based, the
    /// step whose update failed); the last good checkpoint is kept.
    #[error("training diverged at step {step}: {what}")]
    NonFinite { step: u64, what: String },
    /// A rank of a data-parallel job could not join it, or a collective failed (another rank
    /// died or hung).
    #[error("rank {rank}: {what}")]
    Distributed { rank: usize, what: String },
    /// Another process holds the run folder's lock (see [`crate::run_lock`]).
    #[error(
        "{} is in use by {}: a run folder takes one writer at a time; wait for it to finish, stop it, \
         or choose another folder",
        dir.display(),
        holder.map_or("another process".to_string(), |pid| format!("another cdm process (PID {pid})"))
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    /// What failed, and in which part of a larger task (the `--data` spec, a report's section).
    #[error("{what}: {cause}")]
    In { what: String, cause: Box<Error> },
    /// A sampler's state stopped being finite (a diverging model or sampler).
    #[error("sampler state became non-finite at step {step} (level {level})")]
    NonFiniteSample { step: usize, level: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// This error, as part of `what`.
    pub fn within(self, what: impl Into<String>) -> Self {
        Error::In { what: what.into(), cause: Box::new(self) }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
