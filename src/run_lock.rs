//! One writer per run folder. Two `cdm train --out RUN` at once would interleave their steps in
//! `log.jsonl` and leave a `config.json` of one run beside the checkpoint of the other, so a
//! writer holds an advisory lock on `RUN/.lock` for as long as it writes there. The lock is the
//! operating system's (`flock`): it ends with its process, however that ends, so the lock of a
//! process that died is simply taken over. The file holds the holder's PID for the message a
//! second writer gets.
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, temporary_owner};
use crate::{Error, Result};

/// The lock file in a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The lock on a run folder, held until dropped (or the process ends).
pub struct RunLock {
    dir: PathBuf,
    _file: File,
}

impl RunLock {
    /// Creates `dir` if needed and takes its lock, or fails with [`Error::Locked`] naming the
    /// holder's PID. Then removes the temporary files that writers killed mid-write left there.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let io = |e| Error::io(&path, e);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked { dir: dir.to_path_buf(), holder: holder.trim().parse().ok() });
            }
            // A file system without locks (some network mounts) still trains, unguarded.
            Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
                tracing::warn!("{}: this file system has no file locks; nothing stops a second writer", path.display());
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
        remove_stale_temporaries(dir)?;
        Ok(RunLock { dir: dir.to_path_buf(), _file: file })
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes the run held here (its settings, checkpoint and log), so that a new one starts
    /// in the same folder: what `cdm train --restart` asks for.
    pub fn discard_run(&self) -> Result<()> {
        for name in [checkpoint::CONFIG_FILE, checkpoint::WEIGHTS_FILE, checkpoint::LOG_FILE] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(Error::io(&path, e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Removes the `.NAME.tmpPID` files in `dir` of processes that no longer run: what a writer
/// killed during [`checkpoint::write_atomic`] leaves (a checkpoint's size each).
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_owner(&name) else { continue };
        if pid != std::process::id() && !process_exists(pid) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            tracing::info!("removed {}, left by a writer that died (PID {pid})", path.display());
        }
    }
    Ok(())
}

/// Whether a process `pid` exists (signal 0 checks without sending anything; EPERM means it
/// exists under another user).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 sends nothing; it only reports whether the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
