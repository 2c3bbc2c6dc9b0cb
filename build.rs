//! Bakes the libtorch location into every binary and test (rpath; `LD_LIBRARY_PATH` still comes
//! first, which is how a GPU host points a copied binary at its own libtorch).
//!
//! libtorch_cuda is deliberately not linked: it needs gigabytes of CUDA libraries, and a binary
//! that lists it as NEEDED does not start without them. torch-sys asks for `-ltorch_cuda`, but
//! rustc links with `--as-needed`, which drops it (no symbol of ours comes from it); a
//! `--no-as-needed` from here would land after the libraries and change nothing. `cdm` loads
//! libtorch_cuda at run time instead (src/device.rs).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let torch = std::fs::canonicalize(&libtorch).unwrap_or_else(|_| PathBuf::from(&libtorch));
    let mut dirs = vec![torch.join("lib")];
    if let Some(root) = torch.parent() {
        dirs.push(root.join("nvidia/cu13/lib"));
    }
    for dir in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}
