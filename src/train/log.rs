//! What training reports: one step's losses, and `log.jsonl`, their record.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::{Error, Result};

/// Losses of one step, for progress display and the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    #[serde(default)]
    pub loss: f64,
    /// The CDM's cross-entropy (absent for a DDM).
    pub ce: Option<f64>,
    #[serde(default)]
    pub mse: f64,
    #[serde(default)]
    pub lr: f64,
    #[serde(default)]
    pub grad_norm: f64,
    /// The contrastive diffusion loss, when training with it (ln 2 is chance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdl: Option<f64>,
    /// How often its noise classifier told kept from noised points in this batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdl_accuracy: Option<f64>,
    /// Wall-clock seconds spent training up to this step, over every session of the run
    /// (sample grids and FIDs not counted).
    #[serde(default)]
    pub seconds: f64,
    /// FID of EMA samples at this step, on the steps `train.fid_every` asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
}

/// The steps recorded in the `log.jsonl` at `path`; a line that is not a step names the file
/// and the line.
pub fn read_log(path: &Path) -> Result<Vec<StepReport>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::Data(format!("{}: line {} is not a logged step: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// `log.jsonl`: one JSON line per logged step. On resume, lines past the checkpoint (and a
/// line torn by a crash) are dropped so the log matches an uninterrupted run. Lines are
/// appended, not the file rewritten: a line costs one write, not the whole log and an fsync.
/// The log is synced to disk with each checkpoint, the state a resumed run goes back to.
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    /// Opens the log of a run at `step`, keeping the lines of steps 1..=`step`.
    pub(crate) fn open(path: &Path, step: u64) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept != text {
            checkpoint::write_atomic(path, kept.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(LogFile { path: path.to_path_buf(), file })
    }

    /// Appends one step's line.
    pub(crate) fn append(&mut self, report: &StepReport) -> Result<()> {
        let line = serde_json::to_string(report).unwrap_or_default() + "\n";
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))
    }

    /// Waits until what was appended is on disk.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}
