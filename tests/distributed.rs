//! Data-parallel training on c10d's Gloo backend, through the binary: two ranks with a global
//! batch B end where one process with batch B ends (weights, EMA and Adam's moments, up to the
//! order of float sums), a two-rank run resumes exactly, ranks started from a launcher's
//! environment train as `--nproc` does, and a rank that dies stops the others with a named
//! error well inside the collective timeout.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cdm::checkpoint::TensorFile;
use cdm::distributed::Shard;
use cdm::loss::{cdm_loss, ddm_loss, LossWeights};
use cdm::rng::Rng;

const CDM: &str = env!("CARGO_BIN_EXE_cdm");

/// `cdm train` into `out` with `flags`, one CPU thread per process unless `extra_env` says.
fn train(out: &Path, flags: &[&str], extra_env: &[(&str, String)]) -> std::process::Output {
    let mut command = Command::new(CDM);
    command.args(["train", "--device", "cpu", "--out"]).arg(out).args(flags).env("OMP_NUM_THREADS", "1");
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "cdm train {flags:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Rank `rank` of a two-rank job meeting at `port`, started from torchrun's variables.
fn spawn_rank(rank: usize, port: u16, out: &Path, flags: &[&str]) -> std::process::Child {
    Command::new(CDM)
        .args(["train", "--device", "cpu", "--out"])
        .arg(out)
        .args(flags)
        .envs([
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.to_string()),
            ("OMP_NUM_THREADS", "1".into()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn checkpoint(run: &Path) -> TensorFile {
    TensorFile::load(&run.join("checkpoint.safetensors")).unwrap()
}

/// The largest difference between the two runs' tensors, relative to the largest value of
/// their group (the weights, the EMA weights, either moment).
///
/// Where a weight's true gradient is zero, Adam turns the rounding noise of its gradient,
/// which depends on the order of float sums, into steps of ±lr: a convolution's bias before a
/// GroupNorm that removes it, or row 0 of a CDM's head (h_0 adds one value to every logit,
/// which changes neither the cross-entropy nor ε̂). Such a weight differs between the runs by
/// up to lr per step, so the tolerance is set against each group's scale, and the CDM head's
/// row 0 is left out.
fn largest_difference(a: &TensorFile, b: &TensorFile) -> f64 {
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    assert_eq!(a.metadata.get("step"), b.metadata.get("step"));
    let group = |name: &str| name.split('/').next().unwrap_or_default().to_string();
    let mut scale = std::collections::HashMap::<String, f64>::new();
    for (name, x) in &a.tensors {
        let largest = scale.entry(group(name)).or_insert(1e-30);
        *largest = largest.max(x.abs().max().double_value(&[]));
    }
    let cdm_head = a.tensors.contains_key("model/head.weight");
    a.tensors
        .iter()
        .map(|(name, x)| {
            let y = &b.tensors[name];
            let (x, y) = match name.ends_with("/head.weight") || name.ends_with("/head.bias") {
                true if cdm_head => (x.narrow(0, 1, x.size()[0] - 1), y.narrow(0, 1, y.size()[0] - 1)),
                _ => (x.shallow_clone(), y.shallow_clone()),
            };
            (x - y).abs().max().double_value(&[]) / scale[&group(name)]
        })
        .fold(0.0, f64::max)
}

/// Two ranks against one process for each model kind: the same run up to float order.
#[test]
fn two_ranks_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &[&str]); 3] = [
        ("cdm", &["--data", "gmm2d", "--model", "cdm", "--low-levels", "0.5", "--level-strides", "1,4"]),
        ("ddm", &["--data", "gmm2d", "--model", "ddm", "--cdl-weight", "1"]),
        ("ddm-images", &["--data", "digits", "--model", "ddm", "--conditional", "--hflip", "--channels", "8"]),
    ];
    for (name, flags) in runs {
        let common =
            [flags, &["--steps", "30", "--batch", "32", "--timesteps", "20", "--checkpoint-every", "30"]].concat();
        let (one, two) = (dir.path().join(format!("{name}-1")), dir.path().join(format!("{name}-2")));
        train(&one, &common, &[]);
        train(&two, &[common.as_slice(), &["--nproc", "2"]].concat(), &[]);
        let difference = largest_difference(&checkpoint(&one), &checkpoint(&two));
        assert!(difference < 2e-5, "{name}: weights, EMA or moments differ by {difference:e} of their scale");
        // Only rank 0 wrote: one log, each step once.
        let log = std::fs::read_to_string(two.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), std::fs::read_to_string(one.join("log.jsonl")).unwrap().lines().count());
    }
}

/// A two-rank run stopped at step 20 and resumed to 40 ends bit for bit where an uninterrupted
/// two-rank run does; ranks started from torchrun's variables end where `--nproc 2` does.
#[test]
fn two_ranks_resume_exactly_and_launch_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let args = |steps: &'static str| {
        ["--data", "gmm2d", "--batch", "32", "--timesteps", "20", "--checkpoint-every", "20", "--steps", steps]
    };
    let run = |out: &Path, steps| train(out, &[&args(steps)[..], &["--nproc", "2"]].concat(), &[]);
    let (straight, resumed, launched) =
        (dir.path().join("straight"), dir.path().join("resumed"), dir.path().join("launched"));
    run(&straight, "40");
    run(&resumed, "20");
    run(&resumed, "40");
    assert_eq!(largest_difference(&checkpoint(&straight), &checkpoint(&resumed)), 0.0, "resume is exact");

    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = (0..2).map(|rank| spawn_rank(rank, port, &launched, &args("40"))).collect();
    for rank in ranks {
        let output = rank.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(largest_difference(&checkpoint(&straight), &checkpoint(&launched)), 0.0, "as --nproc 2 trains");
}

/// Rank 1 killed mid-run: rank 0 stops with an error that names the failed collective, long
/// before the collective timeout; `--nproc` reports the rank that failed.
#[test]
fn a_dead_rank_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let timeout = 120;
    let timeout_flag = timeout.to_string();
    let flags = ["--data", "gmm2d", "--steps", "1000000", "--batch", "32", "--checkpoint-every", "1000000"];
    let flags = [&flags[..], &["--dist-timeout", &timeout_flag]].concat();
    let spawn = |rank: usize| spawn_rank(rank, port, &dir.path().join("run"), &flags);
    let (first, mut second) = (spawn(0), spawn(1));
    // Training has begun once rank 0 has logged a step.
    let log = dir.path().join("run/log.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |l| l.is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(120), "the job never started training");
        std::thread::sleep(Duration::from_millis(100));
    }
    second.kill().unwrap();
    let killed = Instant::now();
    let output = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("rank 0:") && stderr.contains("another rank has stopped"), "{stderr}");
    assert!(killed.elapsed() < Duration::from_secs(timeout / 4), "took {:?}", killed.elapsed());
}

/// The losses of a batch's shards add up to the batch's loss, and so do their gradients: what
/// the ranks' all-reduce relies on.
#[test]
fn shard_losses_add_up_to_the_batch_loss() {
    use cdm::model::{Model, ModelKind};
    use cdm::nets::MlpConfig;
    use tch::{Device, Kind, Tensor};
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let config = common::mlp_config(kind, 10, MlpConfig { hidden: 16, blocks: 1, ..MlpConfig::default() }, &[2]);
        let model = Model::new(&vs.root(), &config).unwrap();
        let x0 = Rng::new(1).normal(&[12, 2], Kind::Float);
        let weights =
            LossWeights { low_levels: if kind == ModelKind::Cdm { 0.5 } else { 0.0 }, ..LossWeights::default() };
        let loss_and_grad = |shard: Shard| {
            let rows = shard.rows(&x0);
            let loss = match &model {
                Model::Cdm(m) => cdm_loss(m, &rows, None, &weights, shard, &mut Rng::new(9)),
                Model::Ddm(m) => ddm_loss(m, &rows, None, &weights, shard, &mut Rng::new(9)),
            }
            .unwrap()
            .total;
            let grads = Tensor::run_backward(&[&loss], &vs.trainable_variables(), false, false);
            let flat: Vec<_> = grads.iter().map(|g| g.flatten(0, -1)).collect();
            (loss.double_value(&[]), Tensor::cat(&flat, 0))
        };
        let (whole, whole_grad) = loss_and_grad(Shard::whole(12));
        let parts: Vec<_> = (0..3).map(|r| loss_and_grad(Shard::of(12, r, 3).unwrap())).collect();
        let sum: f64 = parts.iter().map(|p| p.0).sum();
        let grad_sum = parts.iter().map(|p| p.1.shallow_clone()).fold(whole_grad.zeros_like(), |a, b| a + b);
        assert!((sum - whole).abs() < 1e-5 * whole.abs().max(1.0), "{kind:?}: {sum} vs {whole}");
        let off = (&grad_sum - &whole_grad).abs().max().double_value(&[]);
        assert!(off < 1e-4 * whole_grad.abs().max().double_value(&[]).max(1.0), "{kind:?}: gradients off by {off}");
    }
}

/// Ctrl-C from a terminal reaches every process of the job: the ranks agree on one step, rank 0
/// writes its checkpoint, and the job resumes from it.
#[test]
fn ctrl_c_stops_every_rank_at_one_checkpointed_step() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let flags = ["--data", "gmm2d", "--batch", "32", "--checkpoint-every", "1000000"];
    let mut job = Command::new(CDM)
        .args(["train", "--device", "cpu", "--nproc", "2", "--steps", "1000000", "--out"])
        .arg(&run)
        .args(flags)
        .env("OMP_NUM_THREADS", "1")
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(run.join("log.jsonl")).map_or(true, |l| l.is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(120), "the job never started training");
        std::thread::sleep(Duration::from_millis(50));
    }
    let group = format!("-{}", job.id());
    assert!(Command::new("kill").args(["-INT", "--", &group]).status().unwrap().success());
    let status = job.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains("stopped by SIGINT"), "{stderr}");
    assert!(!stderr.contains("another rank has stopped"), "the ranks stopped together:\n{stderr}");
    let step: u64 = checkpoint(&run).metadata["step"].parse().unwrap();
    assert!(step >= 50, "stopped at step {step}, before the first log line");
    // Resumed by the same job: to a few steps further, without complaint.
    let further = (step + 3).to_string();
    train(&run, &[&flags[..], &["--nproc", "2", "--steps", &further]].concat(), &[]);
    assert_eq!(checkpoint(&run).metadata["step"], further);
}

/// `cdm eval` with `--nproc` shares the bits/dim (a CDM's one pass with uniform
/// dequantization, a DDM's I-MMSE) and the FID samples among the ranks, in uneven shares of
/// whole chunks, and reports what one process reports.
#[test]
fn eval_ranks_share_bits_per_dim_and_fid_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (cdm_run, ddm_run) = (dir.path().join("cdm"), dir.path().join("ddm"));
    // 8-bit images, k/127.5 − 1: the bits/dim come in both 8-bit conventions.
    let images = dir.path().join("images.npy");
    let pixels = Rng::new(7).integers(64 * 64, 256).reshape([64, 1, 8, 8]).to_kind(tch::Kind::Double) / 127.5 - 1.0;
    cdm::data::npy::write_npy(&images, &pixels).unwrap();
    let data = format!("npy:{}", images.display());
    let common = ["--data", &data, "--channels", "8", "--steps", "2", "--timesteps", "10", "--batch", "8"];
    train(&cdm_run, &[&common[..], &["--model", "cdm"]].concat(), &[]);
    train(&ddm_run, &[&common[..], &["--model", "ddm"]].concat(), &[]);
    let eval = |out: &Path, nproc: &[&str]| {
        let output = Command::new(CDM)
            .args(["eval", "--device", "cpu", "--only", "nll,fid", "--n", "40", "--batch", "8", "--nfe-images", "20"])
            .args(["--evaluations", "2", "--fid-samples", "12", "--fid-reference", "16", "--steps", "4", "--ckpt"])
            .arg(&cdm_run)
            .arg("--compare")
            .arg(&ddm_run)
            .arg("--out")
            .arg(out)
            .args(nproc)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(output.status.success(), "cdm eval {nproc:?}: {}", String::from_utf8_lossy(&output.stderr));
        cdm::eval::Report::read(&out.join("report.json")).unwrap()
    };
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let (alone, shared) = (eval(&one, &[]), eval(&two, &["--nproc", "2"]));
    let (rows, shared_rows) = (alone.nll.unwrap(), shared.nll.unwrap());
    assert_eq!(rows.len(), 4, "two models, two 8-bit conventions: {rows:?}");
    for (a, b) in rows.iter().zip(&shared_rows) {
        assert_eq!((&a.model, &a.convention, a.n), (&b.model, &b.convention, b.n));
        let per_point = |dir: &Path| tch::Tensor::read_npy(dir.join(&a.per_point)).unwrap();
        let gap = (per_point(&one) - per_point(&two)).abs().max().double_value(&[]);
        assert!(gap <= 1e-9 * a.bits_per_dim.abs(), "{}: per-point bits/dim differ by {gap:e}", a.per_point);
    }
    let (fid, shared_fid) = (alone.fid.unwrap(), shared.fid.unwrap());
    assert!(
        fid.fid.is_finite() && (fid.fid - shared_fid.fid).abs() <= 1e-6 * fid.fid,
        "{fid:?} against {shared_fid:?}"
    );
    let (a, b) = (fid.sampling_cost, shared_fid.sampling_cost);
    assert_eq!((a.batches, a.iterations, a.evaluations), (b.batches, b.iterations, b.evaluations));
}

/// `cdm sample --parallel P --nproc 2`: each rank evaluates its share of every iteration's
/// window slots, the results gathered, and the ranks draw what one process draws (a CDM on 2-D
/// data; a class-conditional DDM on images with guidance, whose labels repeat over the slots).
#[test]
fn sample_ranks_share_the_window_and_draw_what_one_process_draws() {
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &[&str], &[&str]); 2] = [
        ("cdm-2d", &["--data", "gmm2d", "--timesteps", "20"], &["--n", "6"]),
        (
            "ddm-digits",
            &["--data", "digits", "--model", "ddm", "--conditional", "--channels", "8", "--timesteps", "20"],
            &["--n", "5", "--guidance", "1"],
        ),
    ];
    for (name, train_flags, sample_flags) in runs {
        let run = dir.path().join(name);
        train(&run, &[train_flags, &["--steps", "3", "--batch", "16"]].concat(), &[]);
        let sample = |out: &str, nproc: &[&str]| {
            let out = dir.path().join(out);
            let output = Command::new(CDM)
                .args(["sample", "--device", "cpu", "--steps", "12", "--parallel", "5", "--tol", "0.01", "--json"])
                .args(sample_flags)
                .arg("--ckpt")
                .arg(&run)
                .arg("--out")
                .arg(&out)
                .args(nproc)
                .env("OMP_NUM_THREADS", "1")
                .output()
                .unwrap();
            assert!(output.status.success(), "{name} {nproc:?}: {}", String::from_utf8_lossy(&output.stderr));
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            (cdm::data::npy::read_npy(&out).unwrap(), report["cost"]["iterations"].as_u64().unwrap())
        };
        let ((alone, iterations), (shared, shared_iterations)) =
            (sample(&format!("{name}-1.npy"), &[]), sample(&format!("{name}-2.npy"), &["--nproc", "2"]));
        assert_eq!(iterations, shared_iterations, "{name}");
        let gap = (&alone - &shared).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "{name}: samples differ by {gap:e}");
    }
}

/// Which backend a rank takes: Gloo on the CPU, whatever `CDM_DIST_BACKEND` says, save that NCCL
/// is refused there by name, as is an unknown backend. (NCCL itself needs a GPU: tests/gpu.rs.)
#[test]
fn the_backend_is_gloo_on_the_cpu_and_a_wrong_choice_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |backend: Option<&str>| {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
        let mut command = Command::new(CDM);
        command
            .args(["train", "--device", "cpu", "--data", "gmm2d", "--steps", "2", "--batch", "8", "--restart", "--out"])
            .arg(dir.path().join("run"))
            .envs([("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("OMP_NUM_THREADS", "1")])
            .env("MASTER_PORT", port.to_string())
            .env_remove("CDM_DIST_BACKEND");
        if let Some(backend) = backend {
            command.env("CDM_DIST_BACKEND", backend);
        }
        command.output().unwrap()
    };
    for backend in [None, Some("gloo")] {
        let output = run(backend);
        assert!(output.status.success(), "{backend:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    for (backend, expected) in [
        ("nccl", "CDM_DIST_BACKEND=nccl needs ranks on CUDA devices"),
        ("mpi", "CDM_DIST_BACKEND is 'mpi'; expected gloo or nccl"),
    ] {
        let output = run(Some(backend));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{backend}: {stderr}");
    }
}
