//! `cdm bench` on the CPU (the PyTorch side needs `make bench`'s PyTorch, so Rust only here):
//! the device and batch it reports, and the paper's CIFAR-10 UNet at its published size.
use std::process::Command;

/// Runs `cdm bench ARGS --steps 1 --rounds 1 --no-reference --device cpu`: its JSON report.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm"))
        .arg("bench")
        .args(args)
        .args(["--steps", "1", "--rounds", "1", "--no-reference", "--device", "cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}:\n{stderr}");
    assert!(stderr.contains("using CPU, as asked"), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn reports_device_batch_and_network_size() {
    let report = bench(&["--size", "cifar10-ddm", "--batch", "1"]);
    assert_eq!(report["device"], "cpu", "{report}");
    assert_eq!(report["batch"], 1, "{report}");
    assert!(report["rust_ms_per_step"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    // The DDPM CIFAR-10 network: 35.7 M parameters (Ho et al. 2020, appendix B; tests/unet.rs).
    let params = report["params"].as_u64().unwrap_or(0);
    assert!((35_650_000..35_800_000).contains(&params), "{report}");
}
