//! Picking the device. libtorch keeps its CUDA backend in `libtorch_cuda.so`, which needs
//! gigabytes of CUDA libraries (cuBLAS, cuDNN, NCCL, ...). The binary does not link it, so it
//! starts on a CPU host that has none of them; [`load_cuda`] loads it at run time from the
//! folder of the `libtorch_cpu.so` this process runs on (the same build, found the way the
//! loader found that one: `LD_LIBRARY_PATH`, then the rpath baked in by `build.rs`). Loading it
//! registers the CUDA backend with libtorch's dispatcher. libtorch looks up that backend once,
//! on its first CUDA query or seed, so call [`load_cuda`] before anything else touches libtorch.
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// The library that holds libtorch's CUDA backend.
pub const CUDA_LIBRARY: &str = "libtorch_cuda.so";

/// The libtorch library every binary links; [`CUDA_LIBRARY`] is looked for beside it.
pub const CPU_LIBRARY: &str = "libtorch_cpu.so";

/// What `cdm` uses of libtorch_cuda beyond its kernels, built by `scripts/build-cuda.sh` from
/// `csrc/nccl.cpp` (c10d's NCCL backend) and `csrc/cuda_graph.cpp` (CUDA graphs): looked for at
/// `$CDM_CUDA_LIBRARY`, else beside the running binary.
pub const EXTENSION_LIBRARY: &str = "libcdm_cuda.so";

/// Which device a command asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first GPU when CUDA works, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// A GPU that libtorch can use.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// CUDA devices visible to libtorch.
    pub count: i64,
    /// The first one's name (from the CUDA driver), e.g. "NVIDIA H200".
    pub name: String,
    /// Its memory in bytes (0 when the driver does not say).
    pub memory: u64,
    /// Where the CUDA backend was loaded from.
    pub library: PathBuf,
}

/// The device picked for a command and a sentence saying which and why, for its stderr.
#[derive(Debug)]
pub struct Choice {
    pub device: Device,
    pub reason: String,
}

/// Loads the CUDA backend once per process: the path it came from, or why it could not be
/// loaded (the loader's own message, which names the missing library).
pub fn load_cuda() -> std::result::Result<&'static Path, &'static str> {
    static LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = match loaded_library_dir(CPU_LIBRARY) {
                Some(dir) => dir.join(CUDA_LIBRARY),
                // Not expected (every binary links it); the loader's own search is the next best.
                None => PathBuf::from(CUDA_LIBRARY),
            };
            dlopen(&path, libc::RTLD_NOW | libc::RTLD_GLOBAL)
                .map(|_| path.clone())
                .map_err(|why| format!("loading {}: {why}", path.display()))
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(String::as_str)
}

/// The GPU libtorch would use, or [`Error::CudaUnavailable`] saying why there is none.
pub fn gpu() -> Result<Gpu> {
    let library = load_cuda().map_err(|reason| {
        Error::CudaUnavailable(format!(
            "{reason} (the CUDA backend needs the CUDA libraries: `make setup CUDA=1` installs them, \
             or point LD_LIBRARY_PATH at a PyTorch's torch/lib and nvidia/*/lib)"
        ))
    })?;
    let count = tch::Cuda::device_count();
    if count < 1 {
        return Err(Error::CudaUnavailable(format!(
            "{} loaded, but CUDA sees no device (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)",
            library.display()
        )));
    }
    let (name, memory) = driver_device_info().unwrap_or_else(|| ("unknown GPU".into(), 0));
    Ok(Gpu { count, name, memory, library: library.to_path_buf() })
}

/// Picks the device for `request`: `Cuda` fails with [`Error::CudaUnavailable`] when there is
/// no usable GPU, `Auto` falls back to the CPU and says why.
pub fn choose(request: Request) -> Result<Choice> {
    if request == Request::Cpu {
        return Ok(Choice { device: Device::Cpu, reason: "using CPU, as asked".into() });
    }
    match gpu() {
        Ok(gpu) => Ok(Choice {
            device: Device::Cuda(0),
            reason: format!(
                "using CUDA device 0 of {}: {}, {:.1} GiB (backend {})",
                gpu.count,
                gpu.name,
                gpu.memory as f64 / (1u64 << 30) as f64,
                gpu.library.display()
            ),
        }),
        Err(err @ Error::CudaUnavailable(_)) if request == Request::Auto => {
            Ok(Choice { device: Device::Cpu, reason: format!("using CPU: {err}") })
        }
        Err(err) => Err(err),
    }
}

/// The folder the dynamic loader took the loaded library `file` from, as it found it (through
/// `LD_LIBRARY_PATH` or an rpath, symbolic links not resolved); `None` if it is not loaded.
pub fn loaded_library_dir(file: &str) -> Option<PathBuf> {
    struct Search<'a> {
        file: &'a OsStr,
        found: Option<PathBuf>,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut c_void) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid entry and our own `data` pointer.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
        let path = Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()));
        if path.file_name() == Some(search.file) {
            search.found = path.parent().map(Path::to_path_buf);
            return 1;
        }
        0
    }
    let mut search = Search { file: OsStr::new(file), found: None };
    // SAFETY: `visit` only reads the entries and writes `search`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}

/// `dlopen(path, flags)`: the handle, or the loader's message.
fn dlopen(path: &Path, flags: c_int) -> std::result::Result<*mut c_void, String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", path.display()))?;
    // SAFETY: a valid C string; dlerror's message is copied before any other dl call.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), flags);
        if handle.is_null() {
            let message = libc::dlerror();
            return Err(if message.is_null() {
                format!("{}: could not be loaded", path.display())
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            });
        }
        Ok(handle)
    }
}

/// The address of `symbol` in the library at `path`, loaded (once; later calls find it loaded)
/// with its own symbols kept to itself; or the loader's reason why not.
pub(crate) fn library_symbol(path: &Path, symbol: &CStr) -> std::result::Result<*mut c_void, String> {
    let handle =
        dlopen(path, libc::RTLD_NOW | libc::RTLD_LOCAL).map_err(|why| format!("loading {}: {why}", path.display()))?;
    // SAFETY: a live handle and a C string.
    let address = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
    match address.is_null() {
        true => Err(format!("{} has no symbol {}", path.display(), symbol.to_string_lossy())),
        false => Ok(address),
    }
}

/// The address of `symbol` in [`EXTENSION_LIBRARY`], loaded after libtorch_cuda (which it
/// needs); or why not, saying how to get it.
pub(crate) fn extension_symbol(symbol: &CStr) -> std::result::Result<*mut c_void, String> {
    load_cuda().map_err(|why| format!("{EXTENSION_LIBRARY} needs libtorch_cuda: {why}"))?;
    let path = match std::env::var_os("CDM_CUDA_LIBRARY") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|e| format!("locating {EXTENSION_LIBRARY} beside the binary: {e}"))?
            .with_file_name(EXTENSION_LIBRARY),
    };
    library_symbol(&path, symbol)
        .map_err(|why| format!("{why} (scripts/build-cuda.sh builds it; CDM_CUDA_LIBRARY names it)"))
}

/// A message a C++ shim allocated with strdup (null: none), taken and freed.
pub(crate) fn take_message(message: *mut c_char) -> Option<String> {
    extern "C" {
        fn cdm_free_error(message: *mut c_char);
    }
    (!message.is_null()).then(|| {
        // SAFETY: a NUL-terminated string from strdup, freed once, here.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        unsafe { cdm_free_error(message) };
        text
    })
}

/// Name and memory of CUDA device 0 from the driver API (`libcuda.so.1`, already loaded once
/// libtorch has counted the devices); libtorch itself does not expose them.
fn driver_device_info() -> Option<(String, u64)> {
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type Memory = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
    let driver = dlopen(Path::new("libcuda.so.1"), libc::RTLD_NOW | libc::RTLD_NOLOAD).ok()?;
    let symbol = |name: &CStr| {
        // SAFETY: a valid handle and C string.
        let address = unsafe { libc::dlsym(driver, name.as_ptr()) };
        (!address.is_null()).then_some(address)
    };
    // SAFETY: the CUDA driver API's documented signatures (CUresult is an int, CUdevice an int).
    unsafe {
        let init: Init = std::mem::transmute(symbol(c"cuInit")?);
        let get: Get = std::mem::transmute(symbol(c"cuDeviceGet")?);
        let name_of: Name = std::mem::transmute(symbol(c"cuDeviceGetName")?);
        let memory_of: Memory = std::mem::transmute(symbol(c"cuDeviceTotalMem_v2")?);
        let mut device: c_int = 0;
        if init(0) != 0 || get(&mut device, 0) != 0 {
            return None;
        }
        let mut name = [0 as c_char; 256];
        if name_of(name.as_mut_ptr(), name.len() as c_int, device) != 0 {
            return None;
        }
        let mut memory: usize = 0;
        if memory_of(&mut memory, device) != 0 {
            memory = 0;
        }
        Some((CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(), memory as u64))
    }
}

/// Waits for `device`'s queued work (nothing to wait for on the CPU), so that a time measured
/// around some work is that work's own.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `t` moved to `device` without waiting for the device's queue: a plain copy from host memory
/// to a CUDA device ends with a sync of its stream (the host waits for every kernel queued
/// before it), and a training step uploads its batch and its draws every step. CUDA copies a
/// pageable buffer into its own staging memory before the call returns, so `t` may be dropped
/// at once. Elsewhere the same as `to_device`.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if t.device() == device {
        t.shallow_clone()
    } else if device.is_cuda() {
        t.to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}

/// Host values as a tensor of `shape`, `kind` and `device`, converted on the host where the
/// kind is f32: a sampler uploads small tables every iteration, where each tensor operation
/// costs more than the arithmetic.
pub fn host_tensor(values: &[f64], shape: &[i64], kind: Kind, device: Device) -> Tensor {
    let t = match kind {
        Kind::Float => Tensor::from_slice(&values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        Kind::Double => Tensor::from_slice(values),
        _ => Tensor::from_slice(values).to_kind(kind),
    };
    upload(&t.view(shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_folder_of_libtorch_cpu() {
        let dir = loaded_library_dir(CPU_LIBRARY).expect("every binary links libtorch_cpu");
        assert!(dir.join(CPU_LIBRARY).exists(), "{}", dir.display());
        assert_eq!(loaded_library_dir("libnot-loaded-anywhere.so"), None);
    }

    #[test]
    fn cpu_is_always_available() {
        let choice = choose(Request::Cpu).expect("the CPU needs nothing loaded");
        assert_eq!(choice.device, Device::Cpu);
    }
}
