//! Bakes the libtorch location into every binary and test (rpath), and keeps libtorch_cuda
//! linked so `tch::Cuda::is_available()` works on a GPU host.
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
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
}
