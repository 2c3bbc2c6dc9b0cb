//! `cdm eval` end to end through the binary: a CDM compared with a DDM on 8-bit images gives
//! every section of the report, the pictures on disk, and numbers that are what the library
//! computes for the same checkpoints, points and seeds (the library's functions are checked
//! against known answers in tests/evaluation.rs), or what the per-point files written beside
//! the report give by direct counting.
use std::path::Path;
use std::process::Command;

use cdm::cache::file_stem;
use cdm::checkpoint::load_model;
use cdm::data::npy::{read_npy, write_npy};
use cdm::data::Dataset;
use cdm::eval::{denoising_mse, first, level_classifier, noise_classifier, Batches, Report, Stream};
use cdm::loss::CdlConfig;
use cdm::rng::Rng;
use cdm::sample::Noise;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

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

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
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

    let cdm_run = load_model(&dir.path().join("cdm"), Device::Cpu, true).unwrap();
    let ddm_run = load_model(&dir.path().join("ddm"), Device::Cpu, true).unwrap();
    // The evaluation points: the first 40 of the training file (no test split), seed 0.
    let x = first(&Dataset::open(&data).unwrap().eval_points(40, 0), 40);
    // Per-point values are [N]: tch's own reader (the crate's wants data points).
    let mean_of = |file: &str| Tensor::read_npy(report_dir.join(file)).unwrap().mean(Kind::Double).double_value(&[]);

    // Bits/dim: both 8-bit conventions for each model, each the mean of its per-point file;
    // the DDM on --nfe-images points with the largest budget.
    let nll = report["nll"].as_array().unwrap();
    assert_eq!(nll.len(), 4, "{nll:?}");
    for row in nll {
        let file = row["per_point"].as_str().unwrap();
        assert_eq!(number(&row["bits_per_dim"]), mean_of(file), "{row}");
    }
    let by_file = |file: &str| nll.iter().find(|r| r["per_point"] == file).unwrap_or_else(|| panic!("{file}: {nll:?}"));
    assert_eq!(by_file("nll_bpd_cdm_uniform.npy")["n"], 40);
    assert_eq!(by_file("nll_bpd_ddm_paper.npy")["n"], 10);
    assert!(by_file("nll_bpd_cdm_uniform.npy")["convention"].as_str().unwrap().starts_with("uniform dequantization"));
    assert!(by_file("nll_bpd_ddm_uniform.npy")["estimator"].as_str().unwrap().starts_with("I-MMSE, 3 evaluations"));
    // The CDM's single pass and the DDM at each budget.
    let curve = report["likelihood_vs_evaluations"]["rows"].as_array().unwrap();
    assert_eq!(curve.iter().map(|r| r["evaluations"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 1, 3]);
    // Denoising: each model's MSE at each level is the library's, with the noise of seed 0.
    assert_eq!(report["denoising_mse"]["models"], serde_json::json!(["cdm", "ddm"]));
    let denoising = report["denoising_mse"]["rows"].as_array().unwrap();
    assert_eq!(
        denoising.iter().map(|r| r["level"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 3, 5, 10, 15, 25, 35, 45, 50]
    );
    let eps = Noise::new(0, 0, 40).normal(&x.size()[1..], Kind::Double, Device::Cpu);
    for row in denoising {
        let t = row["level"].as_u64().unwrap() as usize;
        for (k, (name, run)) in [("cdm", &cdm_run), ("ddm", &ddm_run)].into_iter().enumerate() {
            let batches = Batches::new(1024, run.options());
            let mse = denoising_mse(&run.model, &x, t, &eps, &batches).unwrap();
            // float32 weights: the binary runs on one thread, this test on several, so sums
            // are reordered; f32 rounding (1e-7) bounds the difference, a wrong noise would not.
            let reported = number(&row["mse"][k]);
            assert!((reported - mse).abs() <= 1e-7 * mse, "{name} at level {t}: {row} against {mse}");
        }
    }
    // Classifier: the library's metrics for the same points and the seed's stream.
    let classifier = &report["classifier"];
    let batches = Batches::new(1024, cdm_run.options());
    let metrics = level_classifier(
        cdm_run.model.classifier().unwrap(),
        &x,
        &mut Rng::new(Stream::LevelClassifier.seed(0)),
        &batches,
    )
    .unwrap();
    assert_eq!(number(&classifier["accuracy"]), metrics.accuracy);
    assert!((number(&classifier["cross_entropy"]) - metrics.cross_entropy).abs() < 1e-9, "{classifier}");
    assert_eq!(classifier["confusion"], serde_json::to_value(&metrics.confusion).unwrap());
    // Sampler drift: one row per sampler step, down to the clean level, read levels in 0..=T+1.
    let drift = classifier["sampler_drift"]["rows"].as_array().unwrap();
    assert_eq!(drift.len(), 10);
    assert_eq!(drift.last().unwrap()["level"].as_u64(), Some(0));
    for key in ["sampler_states", "real_points"] {
        assert!(drift.iter().all(|r| (0.0..=51.0).contains(&number(&r[key]))), "{key}: {drift:?}");
    }
    // OOD: each AUROC is P(s_in > s_out) + ½ P(s_in = s_out) over all pairs of the per-point
    // profiles written beside the report, counted here pair by pair.
    let stem = file_stem(&format!("npy:{}", other_npy.display()));
    let inside = read_npy(&report_dir.join("ood_profile_data.npy")).unwrap();
    let outside = read_npy(&report_dir.join(format!("ood_profile_{stem}.npy"))).unwrap();
    let share_above = |j: i64| {
        let (a, b) =
            (Vec::<f64>::try_from(inside.select(1, j)).unwrap(), Vec::<f64>::try_from(outside.select(1, j)).unwrap());
        let pairs = a.iter().flat_map(|p| b.iter().map(move |q| (p, q)));
        pairs
            .map(|(p, q)| {
                if p > q {
                    1.0
                } else if p == q {
                    0.5
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / (a.len() * b.len()) as f64
    };
    let ood = &report["ood"]["rows"][0];
    assert_eq!(number(&ood["auroc_likelihood"]), share_above(0));
    let by_level = ood["auroc_log_p_t_by_level"].as_array().unwrap();
    assert_eq!(by_level.len(), 21);
    for (j, pair) in by_level.iter().enumerate() {
        assert_eq!(number(&pair[1]), share_above(j as i64), "level {}", pair[0]);
    }
    // The typed report reads back whole: its Markdown is report.md.
    let typed = Report::read(&report_dir.join("report.json")).unwrap();
    assert_eq!(typed.markdown(), std::fs::read_to_string(report_dir.join("report.md")).unwrap());
    assert_eq!(serde_json::to_value(&typed).unwrap(), report);
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

    // The DDM's noise classifier (`--only cdl`, which a run without CDL gets only when asked):
    // the library's score of the first --nfe-images points (not dequantized: the run was not
    // trained so), the default ζ prior, --evaluations draws, chunks of the default batch (1024 inputs).
    let cdl_dir = dir.path().join("report_cdl");
    let ddm_dir = dir.path().join("ddm");
    let (ddm_dir, cdl_out) = (ddm_dir.to_str().unwrap(), cdl_dir.to_str().unwrap());
    let args = ["--n", "40", "--nfe-images", "10", "--evaluations", "3"];
    cdm(&[&["eval", "--ckpt", ddm_dir, "--only", "cdl", "--out", cdl_out][..], &args].concat());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(cdl_dir.join("report.json")).unwrap()).unwrap();
    let cdl = CdlConfig { draws: 3, ..CdlConfig::default() };
    let expected =
        noise_classifier(&ddm_run.model, &first(&x, 10), &cdl, &Batches::new(1024, ddm_run.options()), 0).unwrap();
    let score = &report["cdl"]["score"];
    assert_eq!(score["n"], 10);
    assert!((number(&score["loss"]) - expected.loss).abs() < 1e-6, "{score} against {expected:?}");
    assert_eq!(number(&score["accuracy"]), expected.accuracy);
}

#[test]
fn parallel_mmd_is_scored_per_iteration_and_plotted() {
    // A DDM on the CDL paper's 1-D toy, every DDPM step in one window from copies of x_T: the
    // report holds the MMD² after each iteration (the last the samples' own), its plot, and the
    // Bayes noise classifier beside the model's (two-modes is known after noise too).
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    cdm(&[
        "train",
        "--data",
        "two-modes",
        "--model",
        "ddm",
        "--out",
        run,
        "--steps",
        "5",
        "--batch",
        "16",
        "--hidden",
        "16",
    ]);
    let report_dir = dir.path().join("report");
    let out = report_dir.to_str().unwrap();
    cdm(&[
        "eval",
        "--ckpt",
        run,
        "--out",
        out,
        "--only",
        "mmd,cdl",
        "--n",
        "60",
        "--sampler",
        "ddpm",
        "--steps",
        "12",
        "--parallel",
        "12",
        "--parallel-init",
        "copy",
        "--nfe-images",
        "20",
        "--evaluations",
        "4",
        "--cdl-zeta",
        "trained",
    ]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let model = &report["mmd"]["models"][0];
    let trace: Vec<f64> = model["mmd2_per_iteration"].as_array().unwrap().iter().map(number).collect();
    assert_eq!(trace.len() as u64, model["sampling_cost"]["iterations"].as_u64().unwrap());
    assert_eq!(trace.last().copied(), Some(number(&model["mmd2"])));
    assert!(report_dir.join("mmd_iterations.png").exists());
    let exact = &report["cdl"]["exact"];
    assert_eq!(exact["n"], 20);
    assert!(number(&exact["loss"]) < 2f64.ln(), "the Bayes classifier beats chance: {exact}");
    assert_eq!(report["cdl"]["zeta"], "trained");

    let png = dir.path().join("iterations.png");
    cdm(&["plot", "iterations", report_dir.join("report.json").to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(png.exists());
    // A report without the trace is named, not drawn.
    let flat = dir.path().join("flat");
    cdm(&["eval", "--ckpt", run, "--out", flat.to_str().unwrap(), "--only", "mmd", "--n", "20", "--steps", "4"]);
    let failed = Command::new(env!("CARGO_BIN_EXE_cdm"))
        .args(["plot", "iterations", flat.join("report.json").to_str().unwrap(), "--out", png.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("mmd2_per_iteration"), "{stderr}");
}
