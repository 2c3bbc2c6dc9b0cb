//! Device choice on a host without a GPU, through the real binary: it starts without any CUDA
//! library, `--device auto` picks the CPU and says why on stderr, `--device cuda` fails with a
//! named error, and the CUDA backend is looked for beside the libtorch the loader found, which
//! is how `scripts/gpu-check.sh` points a copied binary at a GPU host's own libraries.
//!
//! On a host with an NVIDIA device these tests do not apply (tests/gpu.rs does) and each says
//! `SKIPPED` on the test output. The tools they use, `readelf` and a C compiler, are the
//! binutils and compiler that linked this binary, so their absence fails rather than skips.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use cdm::device::{loaded_library_dir, CPU_LIBRARY, CUDA_LIBRARY};

/// Runs `cdm ARGS` with extra environment `env`: (success, stdout, stderr).
fn cdm(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("LD_LIBRARY_PATH")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where this process's libtorch lives (its `torch/lib`), as the binaries find it.
fn torch_lib() -> PathBuf {
    loaded_library_dir(CPU_LIBRARY).expect("tests link libtorch_cpu")
}

/// Says on the test output that `test` did not run, and why. Written to stderr directly: the
/// test harness captures and hides `eprintln!` of a passing test, so a skip said that way
/// would read as a pass.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: device::{test}: {why}");
}

/// These tests describe a host without a GPU; on one with a GPU, tests/gpu.rs applies, and
/// `test` is reported skipped.
fn gpu_host(test: &str) -> bool {
    let gpu = Path::new("/dev/nvidiactl").exists();
    if gpu {
        skip(test, "this host has an NVIDIA device (tests/gpu.rs checks it)");
    }
    gpu
}

/// Whether `make setup CUDA=1` put the CUDA libraries beside libtorch here.
fn cuda_libraries_installed() -> bool {
    torch_lib().join("../../.cuda-complete").exists()
}

#[test]
fn the_binary_does_not_link_libtorch_cuda() {
    // readelf is binutils', which linked this binary: missing, it is a broken host, not a skip.
    let out = Command::new("readelf")
        .arg("-d")
        .arg(env!("CARGO_BIN_EXE_cdm"))
        .output()
        .expect("readelf (binutils) runs: it reads the binary's dynamic section");
    assert!(out.status.success(), "readelf -d failed: {}", String::from_utf8_lossy(&out.stderr));
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("[libtorch_cpu.so]"), "{dynamic}");
    assert!(
        !dynamic.contains("[libtorch_cuda.so]"),
        "libtorch_cuda is NEEDED, so no CPU host can start it:\n{dynamic}"
    );
}

#[test]
fn auto_picks_the_cpu_and_says_why() {
    if gpu_host("auto_picks_the_cpu_and_says_why") {
        return;
    }
    let (ok, stdout, stderr) = cdm(&["device"], &[]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(report["device"], "cpu", "{report}");
    assert_eq!(report["cuda"], false, "{report}");
    // The libtorch this test links, though perhaps reached through another path (a symlink).
    let libtorch = PathBuf::from(report["libtorch"].as_str().expect("libtorch's folder"));
    assert_eq!(libtorch.canonicalize().unwrap(), torch_lib().canonicalize().unwrap(), "{report}");
    assert!(stderr.contains("using CPU: CUDA is not available: "), "{stderr}");
    if !cuda_libraries_installed() {
        // The loader's own message: which file it tried, and which CUDA library is missing.
        let tried = libtorch.join(CUDA_LIBRARY);
        assert!(stderr.contains(&tried.display().to_string()), "{stderr}");
        assert!(stderr.contains(".so") && stderr.contains("cannot open shared object file"), "{stderr}");
        assert!(stderr.contains("make setup CUDA=1"), "{stderr}");
    }
}

#[test]
fn cuda_fails_with_a_named_error() {
    if gpu_host("cuda_fails_with_a_named_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for args in [
        vec!["device", "--device", "cuda"],
        vec![
            "train",
            "--data",
            "gmm2d",
            "--steps",
            "1",
            "--timesteps",
            "10",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cuda",
        ],
        vec!["bench", "--size", "mlp2d", "--steps", "1", "--rounds", "1", "--no-reference", "--device", "cuda"],
    ] {
        let (ok, _, stderr) = cdm(&args, &[]);
        assert!(!ok, "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(stderr.contains("error: --device cuda: CUDA is not available: "), "{args:?}:\n{stderr}");
    }
}

#[test]
fn every_command_says_its_device() {
    if gpu_host("every_command_says_its_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let (ok, _, stderr) = cdm(&["train", "--data", "gmm2d", "--steps", "2", "--timesteps", "10", "--out", out], &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("using CPU: CUDA is not available"), "{stderr}");
    let (ok, _, stderr) = cdm(&["nll", "--ckpt", out, "--data", "gmm2d", "--device", "cpu"], &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("using CPU, as asked"), "{stderr}");
}

/// A stand-in libtorch_cuda built with the C compiler: dlopen runs its constructor, which says
/// so, and it registers no CUDA backend. The compiler is the one that linked this crate (and
/// built torch-sys's C++ wrapper), so its absence fails the test.
fn build_stub(dir: &Path) {
    let source = dir.join("stub.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n__attribute__((constructor)) static void loaded(void) { fputs(\"stub libtorch_cuda loaded\\n\", stderr); }\n",
    )
    .unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(CUDA_LIBRARY))
        .arg(&source)
        .status()
        .expect("cc runs: the C compiler builds the stub libtorch_cuda");
    assert!(built.success(), "cc could not build the stub libtorch_cuda");
}

#[test]
fn libtorch_cuda_is_found_beside_libtorch_cpu_through_ld_library_path() {
    if gpu_host("libtorch_cuda_is_found_beside_libtorch_cpu_through_ld_library_path") {
        return;
    }
    // A torch/lib as a GPU host has it: every real library, and a libtorch_cuda that loads.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("torch/lib");
    std::fs::create_dir_all(&lib).unwrap();
    build_stub(&lib);
    for entry in std::fs::read_dir(torch_lib()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name() != Some(CUDA_LIBRARY.as_ref()) {
            std::os::unix::fs::symlink(&path, lib.join(path.file_name().unwrap())).unwrap();
        }
    }
    // As scripts/gpu-check.sh sets it: torch/lib first, then the nvidia/*/lib folders.
    let nvidia = torch_lib().join("../../nvidia/cu13/lib");
    let search = format!("{}:{}", lib.display(), nvidia.display());
    let (ok, stdout, stderr) = cdm(&["device"], &[("LD_LIBRARY_PATH", &search)]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("stub libtorch_cuda loaded"), "the stub was not loaded:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(report["libtorch"], lib.display().to_string(), "{report}");
    assert_eq!(report["device"], "cpu", "{report}");
    let why = report["why_not"].as_str().unwrap_or_default();
    let loaded = format!("{} loaded, but CUDA sees no device", lib.join(CUDA_LIBRARY).display());
    assert!(why.contains(&loaded), "{why}");

    // The same binary without LD_LIBRARY_PATH finds its own libtorch, not the stub.
    let (ok, _, stderr) = cdm(&["device"], &[]);
    assert!(ok && !stderr.contains("stub libtorch_cuda loaded"), "{stderr}");
}
