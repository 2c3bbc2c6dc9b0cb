//! `make setup CUDA=1` installs the CUDA packages that the torch wheel's own metadata pins for
//! this platform (scripts/cuda-requirements.py): markers evaluated, extras kept, Python-only
//! packages and other platforms' left out.
//!
//! `make setup` always installs libtorch from the torch 2.11.0 wheel, so the wheel's metadata
//! is there to read; a libtorch without it fails `reads_the_installed_wheel` with the reason,
//! rather than passing it unchecked.
use std::path::Path;
use std::process::Command;

fn cuda_requirements(metadata: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cuda-requirements.py");
    let out = Command::new("python3").arg(script).arg(metadata).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[test]
fn keeps_this_platforms_cuda_packages_only() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = dir.path().join("METADATA");
    std::fs::write(
        &metadata,
        "Metadata-Version: 2.4\nName: torch\nVersion: 2.11.0\n\
         Requires-Dist: filelock\n\
         Requires-Dist: cuda-toolkit[cudart,cublas]==13.0.2; platform_system == \"Linux\"\n\
         Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == \"Linux\"\n\
         Requires-Dist: nvidia-cudnn-cu13==9.19.0.56; platform_system == \"Linux\"\n\
         Requires-Dist: nvidia-nccl-cu13==2.28.9; platform_system == \"Windows\"\n\
         Requires-Dist: nvidia-extra==1.0; extra == \"opt\"\n\
         Requires-Dist: triton==3.6.0; platform_system == \"Linux\"\n\n\
         The description, which may say Requires-Dist: nvidia-fake==0.\n",
    )
    .unwrap();
    assert_eq!(cuda_requirements(&metadata), ["cuda-toolkit[cublas,cudart]==13.0.2", "nvidia-cudnn-cu13==9.19.0.56"]);
}

#[test]
fn reads_the_installed_wheel() {
    let lib = cdm::device::loaded_library_dir(cdm::device::CPU_LIBRARY).expect("tests link libtorch_cpu");
    let dist_info = lib.join("../../torch-2.11.0.dist-info");
    assert!(
        dist_info.exists(),
        "{} is missing: this libtorch ({}) was not installed from the torch 2.11.0 wheel, as `make setup` \
         installs it (scripts/setup-libtorch.sh), so the CUDA packages it pins cannot be read",
        dist_info.display(),
        lib.display()
    );
    let requirements = cuda_requirements(&dist_info);
    // What torch 2.11.0 pins on Linux (its METADATA); libtorch_cuda.so needs each of them.
    for pinned in [
        "nvidia-cudnn-cu13==9.19.0.56",
        "nvidia-cusparselt-cu13==0.8.0",
        "nvidia-nccl-cu13==2.28.9",
        "nvidia-nvshmem-cu13==3.4.5",
    ] {
        assert!(requirements.iter().any(|r| r == pinned), "{pinned} missing from {requirements:?}");
    }
    assert!(requirements.iter().any(|r| r.starts_with("cuda-toolkit[") && r.contains("cublas")), "{requirements:?}");
    assert!(requirements.iter().all(|r| r.starts_with("nvidia-") || r.starts_with("cuda-toolkit")), "{requirements:?}");
}
