//! Checkpoints: a run directory holds `config.json` (readable settings) and
//! `checkpoint.safetensors` (weights, EMA weights, optimiser state; the step in the metadata).
//! Every file is written atomically, so a crash never leaves a half-written checkpoint. A
//! checkpoint carries a CRC-32 of each tensor's bytes, checked on load with the tensors'
//! finiteness, so a file damaged on disk or in a copy is refused by name instead of scoring
//! NaN or diverging steps later.
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use tch::{nn::VarStore, Kind, Tensor};

use crate::{Error, Result};

pub mod run;

pub use run::{load_model, saved_run, LoadedModel};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "checkpoint.safetensors";
pub const LOG_FILE: &str = "log.jsonl";

/// The metadata key of the tensors' checksums: a JSON object of each tensor's CRC-32. Files
/// written before it existed load unchecked.
const CHECKSUMS: &str = "crc32";

/// Tensor kinds a checkpoint holds, with their safetensors names.
const DTYPES: [(Kind, Dtype); 3] = [(Kind::Float, Dtype::F32), (Kind::Double, Dtype::F64), (Kind::Int64, Dtype::I64)];

/// The temporary file beside `path` that [`write_atomic`] writes first: `.NAME.tmpPID`.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// The PID of the process whose [`write_atomic`] left the file named `name`, if it is such a
/// temporary file: a writer killed mid-write leaves one behind.
pub fn temporary_owner(name: &str) -> Option<u32> {
    let (_, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    pid.parse().ok()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Named tensors plus string metadata, as stored in a safetensors file.
#[derive(Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Adds every variable of `vs` under `prefix/`.
    pub fn insert_vars(&mut self, prefix: &str, vs: &VarStore) {
        for (name, var) in vs.variables() {
            self.tensors.insert(format!("{prefix}/{name}"), var.detach().to_device(tch::Device::Cpu));
        }
    }

    /// Copies the tensors under `prefix/` into the variables of `vs`, which must match them
    /// one to one in names and shapes.
    pub fn load_vars(&self, prefix: &str, vs: &mut VarStore, path: &Path) -> Result<()> {
        let vars = vs.variables();
        let expected = self.tensors.keys().filter(|k| k.starts_with(&format!("{prefix}/"))).count();
        if expected != vars.len() {
            return Err(Error::checkpoint(
                path,
                format!("holds {expected} tensors under '{prefix}/', the model has {}", vars.len()),
            ));
        }
        tch::no_grad(|| {
            for (name, mut var) in vars {
                let key = format!("{prefix}/{name}");
                let saved =
                    self.tensors.get(&key).ok_or_else(|| Error::checkpoint(path, format!("missing tensor '{key}'")))?;
                if saved.size() != var.size() {
                    return Err(Error::checkpoint(
                        path,
                        format!("tensor '{key}' has shape {:?}, the model needs {:?}", saved.size(), var.size()),
                    ));
                }
                var.f_copy_(saved)?;
            }
            Ok(())
        })
    }

    pub fn get(&self, key: &str, path: &Path) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| Error::checkpoint(path, format!("missing tensor '{key}'")))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut owned = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let t = t.contiguous();
            let dtype = DTYPES.iter().find(|(k, _)| *k == t.kind()).map(|(_, d)| *d).ok_or_else(|| {
                Error::checkpoint(path, format!("tensor '{name}' has unsupported kind {:?}", t.kind()))
            })?;
            let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut bytes, t.numel())?;
            owned.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect::<Vec<_>>(), bytes));
        }
        let checksums: BTreeMap<&str, u32> =
            owned.iter().map(|(name, _, _, bytes)| (name.as_str(), crc32fast::hash(bytes))).collect();
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUMS.into(), serde_json::to_string(&checksums).unwrap_or_default());
        let views = owned
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::checkpoint(path, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes =
            safetensors::serialize(views, &Some(metadata)).map_err(|e| Error::checkpoint(path, e.to_string()))?;
        write_atomic(path, &bytes)
    }

    /// Reads a safetensors file written by [`TensorFile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// [`TensorFile::load`] on the bytes of a file already read; `path` names it in errors.
    /// Each tensor must match its checksum (when the file has them) and hold finite values.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::checkpoint(path, format!("corrupt or truncated safetensors file: {e:?}")))?;
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::checkpoint(path, format!("corrupt or truncated safetensors file: {e:?}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let checksums: Option<HashMap<String, u32>> = metadata
            .get(CHECKSUMS)
            .map(|text| serde_json::from_str(text))
            .transpose()
            .map_err(|e| Error::checkpoint(path, format!("damaged checksums in the metadata: {e}")))?;
        let damaged = |name: &str, what: &str| {
            Error::checkpoint(path, format!("tensor '{name}' {what}: the file is damaged; restore it from a copy"))
        };
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let kind = DTYPES.iter().find(|(_, d)| *d == view.dtype()).map(|(k, _)| *k).ok_or_else(|| {
                Error::checkpoint(path, format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()))
            })?;
            if let Some(checksums) = &checksums {
                match checksums.get(&name) {
                    Some(&sum) if sum == crc32fast::hash(view.data()) => {}
                    Some(_) => return Err(damaged(&name, "does not match its checksum")),
                    None => return Err(damaged(&name, "has no checksum")),
                }
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            if tensor.is_floating_point() && tensor.isfinite().all().f_int64_value(&[])? == 0 {
                return Err(damaged(&name, "holds NaN or infinite values"));
            }
            tensors.insert(name, tensor);
        }
        Ok(TensorFile { tensors, metadata })
    }
}

/// Reads a JSON file into `T`, naming the file and the field in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, e.to_string()))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// The config and checkpoint files of a run directory.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE))
}
