//! `cdm eval` end to end through the binary: a CDM compared with a DDM on 8-bit images gives
//! every section of the report, with numbers in range and the pictures on disk.
use std::path::Path;
use std::process::Command;

use cdm::data::npy::write_npy;
use serde_json::Value;
use tch::{Kind, Tensor};

fn cdm(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdm")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(out.status.success(), "cdm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// 8-bit 8×8 images, x = k/127.5 − 1: blobs at a few positions.
fn eight_bit_images(n: i64, seed: i64) -> Tensor {
    let i = Tensor::arange(8, (Kind::Double, tch::Device::Cpu));
    let centre = (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * 1.7 + seed as f64).sin() * 2.5 + 3.5;
    let (c, row, col) = (centre.view([n, 1, 1, 1]), i.view([1, 1, 8, 1]), i.view([1, 1, 1, 8]));
    let blob = (-((row - &c).square() + (col - &c).square()) / 4.0).exp();
    (blob * 255.0).round() / 127.5 - 1.0
}

fn train(dir: &Path, data: &str, kind: &str) {
    let out = dir.to_str().unwrap();
    cdm(&[
        "train",
        "--data",
        data,
        "--model",
        kind,
        "--out",
        out,
        "--steps",
        "5",
        "--batch",
        "16",
        "--channels",
        "8",
        "--timesteps",
        "50",
    ]);
}

#[test]
fn eval_writes_every_section_of_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (train_npy, other_npy) = (dir.path().join("train.npy"), dir.path().join("other.npy"));
    write_npy(&train_npy, &eight_bit_images(64, 0)).unwrap();
    // Other data: flat grey images.
    write_npy(&other_npy, &(Tensor::zeros([64, 1, 8, 8], (Kind::Double, tch::Device::Cpu)) - 0.2)).unwrap();
    let data = format!("npy:{}", train_npy.display());
    train(&dir.path().join("cdm"), &data, "cdm");
    train(&dir.path().join("ddm"), &data, "ddm");
    let report_dir = dir.path().join("report");
    cdm(&[
        "eval",
        "--ckpt",
        dir.path().join("cdm").to_str().unwrap(),
        "--compare",
        dir.path().join("ddm").to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
        "--n",
        "40",
        "--evaluations",
        "1,3",
        "--nfe-images",
        "10",
        "--fid-samples",
        "0",
        "--steps",
        "10",
        "--ood",
        &format!("npy:{}", other_npy.display()),
    ]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let number = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));

    // Bits/dim: both 8-bit conventions for each model, finite.
    let nll = report["nll"].as_array().unwrap();
    assert_eq!(nll.len(), 4, "{nll:?}");
    assert!(nll.iter().all(|r| number(&r["bits_per_dim"]).is_finite()));
    assert!(nll.iter().any(|r| r["convention"].as_str().unwrap().starts_with("uniform dequantization")));
    assert!(nll.iter().any(|r| r["estimator"].as_str().unwrap().starts_with("I-MMSE, 3 evaluations")));
    // The CDM's single pass and the DDM at each budget.
    let curve = report["likelihood_vs_evaluations"].as_array().unwrap();
    assert_eq!(curve.iter().map(|r| r["evaluations"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 1, 3]);
    // Denoising: one row per level with both models.
    let denoising = report["denoising_mse"].as_array().unwrap();
    assert!(denoising.len() >= 5);
    assert!(denoising.iter().all(|r| number(&r["cdm"]) >= 0.0 && number(&r["ddm"]) >= 0.0));
    // Classifier: the confusion matrix counts every point once.
    let classifier = &report["classifier"];
    assert!((0.0..=1.0).contains(&number(&classifier["accuracy"])));
    let total: u64 = classifier["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);
    // Sampler drift: one row per sampler step, down to the clean level, read levels in 0..=T+1.
    let drift = classifier["sampler_drift"].as_array().unwrap();
    assert_eq!(drift.len(), 10);
    assert_eq!(drift.last().unwrap()["level"].as_u64(), Some(0));
    for key in ["sampler_states", "real_points"] {
        assert!(drift.iter().all(|r| (0.0..=51.0).contains(&number(&r[key]))), "{key}: {drift:?}");
    }
    // OOD: AUROCs are probabilities.
    let ood = &report["ood"][0];
    for key in ["auroc_likelihood", "auroc_typicality_sum_squares", "auroc_typicality_max_abs"] {
        assert!((0.0..=1.0).contains(&number(&ood[key])), "{key}: {}", ood[key]);
    }
    for file in [
        "report.md",
        "likelihood_vs_nfe.png",
        "likelihood_vs_seconds.png",
        "denoising_mse.png",
        "confusion.png",
        "logit_profile.png",
        "sampler_drift.png",
        "ood_auroc_by_level.png",
        "nll_bpd_cdm_uniform.npy",
        "nll_bpd_ddm_paper.npy",
    ] {
        assert!(report_dir.join(file).exists(), "{file} missing");
    }
}
