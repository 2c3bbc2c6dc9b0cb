//! What a long run meets, through the binary: a second writer, Ctrl-C and SIGTERM, a run
//! stopped before its first checkpoint, a checkpoint damaged on disk, the files a killed writer
//! leaves, a file-size limit, and messages that must name what is wrong before any work.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cdm::checkpoint::load_model;
use cdm::checkpoint::TensorFile;
use tch::Device;

fn cdm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdm"));
    command.env("OMP_NUM_THREADS", "1").env("RUST_LOG", "warn");
    command
}

fn run(args: &[&str]) -> Output {
    cdm().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails(args: &[&str], needles: &[&str]) -> String {
    let out = run(args);
    let text = stderr(&out);
    assert!(!out.status.success(), "{args:?} should fail:\n{text}");
    assert!(!text.contains("panicked"), "{args:?} panicked:\n{text}");
    for needle in needles {
        assert!(text.contains(needle), "{args:?}: stderr lacks '{needle}':\n{text}");
    }
    text
}

fn assert_succeeds(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", stderr(&out));
}

/// The flags of a tiny 2-D run; the learning rate stays constant, so that a run's length does
/// not change its steps.
const TINY: [&str; 10] = ["--data", "gmm2d", "--hidden", "16", "--timesteps", "10", "--batch", "16", "--lr", "1e-3"];

fn tiny_config(dir: &Path) -> PathBuf {
    let path = dir.join("constant-lr.toml");
    std::fs::write(&path, "[train]\nlr_decay = { type = \"constant\" }\nwarmup_steps = 5\nlog_every = 1\n").unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny run of `steps` in `out`, trained to the end.
fn tiny_run(out: &Path, steps: &str) {
    assert_succeeds(&[&["train", "--out", s(out), "--steps", steps], &TINY[..]].concat());
}

/// Starts a run in `out` long enough to be stopped, and waits until it has logged `lines`
/// steps.
fn start_long_run(out: &Path, config: &Path, lines: usize) -> Child {
    let child = cdm()
        .args(["train", "--out", s(out), "--config", s(config), "--steps", "1000000"])
        .args(TINY)
        .args(["--checkpoint-every", "1000000"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(out.join("log.jsonl")).map_or(0, |t| t.lines().count()) < lines {
        assert!(start.elapsed() < Duration::from_secs(120), "the run logged nothing in two minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The PID of a process that has ended.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

/// Log lines without their wall-clock seconds.
fn log_without_seconds(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_and_sigterm_saves() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut first = start_long_run(&out, &tiny_config(dir.path()), 2);
    let pid = format!("PID {}", first.id());
    assert_fails(&["train", "--out", s(&out)], &["is in use by another cdm process", &pid]);
    let report = dir.path().join("run");
    assert_fails(&["eval", "--ckpt", s(&out), "--out", s(&report), "--only", "nll"], &[&pid]);
    signal(&first, "TERM");
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(143), "SIGTERM exits with 128 + 15");
    let step = load_model(&out, Device::Cpu, true).unwrap().step;
    assert!(step >= 2, "the stopped run saved its step, got {step}");
    // Its lock ended with it.
    assert_succeeds(&["train", "--out", s(&out), "--steps", &(step + 1).to_string()]);
}

#[test]
fn a_stale_lock_and_the_temporary_files_of_dead_writers_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let dead = dead_pid();
    std::fs::write(out.join(".lock"), dead.to_string()).unwrap();
    let stale = out.join(format!(".checkpoint.safetensors.tmp{dead}"));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    // A live process's temporary file is its own business.
    let live = out.join(format!(".config.json.tmp{}", std::process::id()));
    std::fs::write(&live, b"{}").unwrap();
    tiny_run(&out, "2");
    assert!(!stale.exists(), "the dead writer's temporary file is left");
    assert!(live.exists(), "a live writer's temporary file was removed");
}

#[test]
fn sigint_saves_the_step_and_the_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path());
    let split = dir.path().join("split");
    let child = start_long_run(&split, &config, 3);
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "SIGINT exits with 128 + 2:\n{}", stderr(&out));
    assert!(stderr(&out).contains("stopped by SIGINT"), "{}", stderr(&out));
    let stopped = load_model(&split, Device::Cpu, true).unwrap().step;
    assert_eq!(log_without_seconds(&split).len() as u64, stopped, "the log ends at the saved step");
    let end = (stopped + 5).to_string();
    assert_succeeds(&["train", "--out", s(&split), "--steps", &end]);

    let whole = dir.path().join("whole");
    assert_succeeds(&[&["train", "--out", s(&whole), "--config", s(&config), "--steps", &end], &TINY[..]].concat());
    let tensors = |d: &Path| TensorFile::load(&d.join("checkpoint.safetensors")).unwrap().tensors;
    let (a, b) = (tensors(&whole), tensors(&split));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs from the uninterrupted run's");
    }
    assert_eq!(log_without_seconds(&whole), log_without_seconds(&split), "the logs differ");
}

#[test]
fn a_run_without_a_checkpoint_resumes_from_its_config_and_is_replaced_only_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    tiny_run(&out, "3");
    // Killed before its first checkpoint: only config.json and the log are there.
    std::fs::remove_file(out.join("checkpoint.safetensors")).unwrap();
    assert_succeeds(&["train", "--out", s(&out)]);
    assert_eq!(load_model(&out, Device::Cpu, true).unwrap().step, 3);
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_fails(
        &["train", "--out", s(&out), "--data", "moons"],
        &["holds a run with other settings", "data: \"gmm2d\" in the run, \"moons\" here", "--restart"],
    );
    assert_fails(&["train", "--out", s(&out), "--steps", "2"], &["train.steps 2 is below step 3"]);
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), config, "config.json was replaced");
    assert_eq!(std::fs::read_to_string(out.join("log.jsonl")).unwrap(), log, "log.jsonl was cut");
    assert_succeeds(&["train", "--out", s(&out), "--restart", "--data", "moons", "--steps", "2", "--hidden", "8"]);
    let restarted = load_model(&out, Device::Cpu, true).unwrap();
    assert_eq!((restarted.config.data.as_str(), restarted.step), ("moons", 2));
    // A checkpoint whose settings are lost is not resumed with whatever the flags say.
    std::fs::remove_file(out.join("config.json")).unwrap();
    assert_fails(&["train", "--out", s(&out), "--data", "moons", "--steps", "3"], &["has no config.json beside it"]);
}

/// The byte offsets of tensor `name`'s data in a safetensors file, and its header.
fn tensor_bytes(bytes: &[u8], name: &str) -> (std::ops::Range<usize>, serde_json::Value) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    (8 + n + start..8 + n + end, header)
}

#[test]
fn a_byte_flipped_inside_a_tensor_is_refused_by_name_and_old_checkpoints_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    tiny_run(&out, "2");
    let path = out.join("checkpoint.safetensors");
    let intact = std::fs::read(&path).unwrap();
    let (range, mut header) = tensor_bytes(&intact, "ema/blocks.0.weight");
    let mut damaged = intact.clone();
    damaged[range.start + 3] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    assert_fails(&["nll", "--ckpt", s(&out), "--data", "gmm2d", "--n", "10"], &["'ema/blocks.0.weight'", "checksum"]);
    assert_fails(&["train", "--out", s(&out), "--steps", "3"], &["'ema/blocks.0.weight'", "checksum"]);

    // A checkpoint from before checksums: the same tensors, no "crc32" in the metadata.
    header["__metadata__"].as_object_mut().unwrap().remove("crc32");
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let n = u64::from_le_bytes(intact[..8].try_into().unwrap()) as usize;
    let old = [&(text.len() as u64).to_le_bytes()[..], &text, &intact[8 + n..]].concat();
    std::fs::write(&path, old).unwrap();
    let out_ok = run(&["nll", "--ckpt", s(&out), "--data", "gmm2d", "--n", "10"]);
    assert!(out_ok.status.success(), "{}", stderr(&out_ok));
    assert!(!stderr(&out_ok).contains("checksum"), "{}", stderr(&out_ok));
}

#[test]
fn non_finite_weights_or_optimiser_state_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    tiny_run(&out, "2");
    let path = out.join("checkpoint.safetensors");
    for name in ["ema/blocks.0.weight", "adam_v/blocks.0.weight"] {
        let mut file = TensorFile::load(&path).unwrap();
        let _ = file.tensors.get_mut(name).unwrap().get(0).fill_(f64::NAN);
        // Saved with a checksum of the NaN: only the finiteness check can catch it.
        file.save(&path).unwrap();
        let err = TensorFile::load(&path).err().unwrap().to_string();
        assert!(err.contains(name) && err.contains("NaN or infinite"), "{err}");
        assert_fails(&["train", "--out", s(&out), "--steps", "3"], &[name, "NaN or infinite"]);
        let file = TensorFile {
            tensors: file.tensors.into_iter().map(|(k, t)| (k, t.nan_to_num(0.0, None, None))).collect(),
            ..file
        };
        file.save(&path).unwrap();
    }
}

#[test]
fn a_write_past_the_file_size_limit_is_a_named_error_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let script = r#"ulimit -f 64; exec "$0" "$@""#;
    let result = Command::new("sh")
        .args(["-c", script, env!("CARGO_BIN_EXE_cdm"), "train", "--out", s(&out), "--steps", "2", "--hidden", "256"])
        .args(&TINY[..2])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "ended by a signal, or succeeded:\n{text}");
    assert!(text.contains("checkpoint.safetensors") && text.contains("File too large"), "{text}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".tmp")), "left {left:?}");
}

#[test]
fn messages_name_what_is_wrong_and_outputs_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = s(&out);
    assert_fails(&["train", "--data", "gmm2d", "--out", o, "--lr", "-1"], &["train.lr must be a positive number"]);
    assert_fails(
        &["train", "--data", "gmm2d", "--out", o, "--checkpoint-every", "0"],
        &["--checkpoint-every", "at least 1"],
    );
    assert_fails(&["train", "--data", "gmm2d", "--out", o, "--steps", "0"], &["--steps", "at least 1"]);
    assert_fails(&["train", "--data", "npy:", "--out", o], &["'npy:' names no file", "npy:PATH"]);
    assert_fails(&["train", "--data", "folder:", "--out", o], &["'folder:' names no file", "folder:DIR"]);
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::new(9000, 1).save(images.join("wide.png")).unwrap();
    assert_fails(
        &["train", "--data", &format!("folder:{}", s(&images)), "--out", o],
        &["wide.png", "8192 pixels a side"],
    );
    assert!(!out.join("config.json").exists(), "a refused run left a config.json");

    tiny_run(&out, "2");
    let txt = dir.path().join("x.txt");
    let png = dir.path().join("x.png");
    assert_fails(&["sample", "--ckpt", o, "--n", "4", "--out", s(&txt)], &["x.txt", "expected FILE.npy"]);
    assert_fails(&["sample", "--ckpt", o, "--n", "4", "--out", s(&png)], &["not images"]);
    assert_fails(&["plot", "density", "--ckpt", o, "--out", s(&txt)], &["expected a .png file"]);
    assert_fails(&["nll", "--ckpt", o, "--data", "gmm2d", "--out", s(&txt)], &["expected a .npy file"]);
    let missing = dir.path().join("nowhere/x.npy");
    assert_fails(&["sample", "--ckpt", o, "--n", "4", "--out", s(&missing)], &["the folder", "does not exist"]);
    let report = dir.path().join("report");
    assert_fails(
        &["eval", "--ckpt", o, "--out", s(&report), "--mmd-bandwidth", "nan"],
        &["--mmd-bandwidth", "positive finite number"],
    );
}
