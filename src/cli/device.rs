//! `cdm device`: the device `--device` picks on this host and why, and the GPU if there is one,
//! as one JSON line on stdout (what `scripts/gpu-check.sh` records first).
use anyhow::Result;
use clap::Args;
use serde_json::json;
use tch::Device;

use super::DeviceArg;

#[derive(Args)]
pub struct DeviceArgs {
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

pub fn run(args: DeviceArgs) -> Result<()> {
    let device = args.device.device()?;
    let mut report = match cdm::device::gpu() {
        Ok(gpu) => json!({
            "cuda": true, "gpu": gpu.name, "gpus": gpu.count, "gpu_memory_bytes": gpu.memory,
            "backend": gpu.library.display().to_string(),
        }),
        Err(err) => json!({"cuda": false, "why_not": err.to_string()}),
    };
    report["device"] = json!(match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    });
    report["libtorch"] =
        json!(cdm::device::loaded_library_dir(cdm::device::CPU_LIBRARY).map(|d| d.display().to_string()));
    println!("{report}");
    Ok(())
}
