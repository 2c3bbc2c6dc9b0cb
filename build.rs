//! Bakes the libtorch location into every binary and test (rpath; `LD_LIBRARY_PATH` still comes
//! first, which is how a GPU host points a copied binary at its own libtorch).
//!
//! libtorch_cuda is deliberately not linked: it needs gigabytes of CUDA libraries, and a binary
//! that lists it as NEEDED does not start without them. torch-sys asks for `-ltorch_cuda`, but
//! rustc links with `--as-needed`, which drops it (no symbol of ours comes from it); a
//! `--no-as-needed` from here would land after the libraries and change nothing. `cdm` loads
//! libtorch_cuda at run time instead (src/device.rs).
//!
//! It also compiles what tch 0.24 does not bind against libtorch's headers, with the flags
//! torch-sys compiles its own wrapper with: `csrc/precision.cpp` (autocast to a chosen dtype, the
//! TF32 switch), `csrc/inference_mode.cpp` (the guard that skips autograd's bookkeeping) and
//! `csrc/distributed.cpp` (c10d's store and Gloo process group). The symbols they call are in
//! libtorch_cpu.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=csrc");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run scripts/setup-libtorch.sh (or `make setup`) first");
    };
    let torch = std::fs::canonicalize(&libtorch).unwrap_or_else(|_| PathBuf::from(&libtorch));
    compile_shim(&torch);
    let mut dirs = vec![torch.join("lib")];
    if let Some(root) = torch.parent() {
        dirs.push(root.join("nvidia/cu13/lib"));
    }
    for dir in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}

/// Compiles the shims as torch-sys compiles libtch (C++17, the C++11 ABI that the PyPI wheels
/// use); `csrc/gloo-names` stands in for the Gloo headers the wheel lacks.
fn compile_shim(torch: &Path) {
    let include = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/gloo-names")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/precision.cpp")
        .file("csrc/inference_mode.cpp")
        .file("csrc/distributed.cpp")
        .compile("cdm_shim");
}
