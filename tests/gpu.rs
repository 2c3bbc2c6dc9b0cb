//! The GPU against the CPU, on the same weights and the same random draws: a forward pass, ε̂ by
//! input gradient, the one-pass likelihood, one training step (CE + MSE by double backprop,
//! gradient clipping, Adam, EMA) and a few sampler steps. Ignored where there is no GPU:
//! `cargo test --test gpu -- --ignored`, or `scripts/gpu-check.sh` on a GPU host.
//!
//! Tolerances, relative to the largest magnitude compared: 1e-8 in f64 (only the order of
//! floating-point sums differs between the devices: about 1e-13 per operation, grown through
//! some fifty layers, a backward pass and a few sampler steps); 2e-2 in f32, where cuDNN may
//! convolve in TF32 (a 10-bit mantissa, about 1e-3 per layer). bf16 on the GPU against f32 on
//! the CPU: 5e-2, as bf16 against f32 on the CPU itself (tests/precision.rs measured 1.1e-2 for
//! the logits, 1.6e-2 for a DDM's ε̂, 5e-3 for a training step's gradient norm), with room for
//! the GPU's own kernels (cuDNN and cuBLAS accumulate bf16 products in f32, as oneDNN does).
mod common;

use std::path::Path;

use cdm::checkpoint::{paths, TensorFile};
use cdm::distributed::{Backend, Launch, ProcessGroup, Shard};
use cdm::likelihood::log_prob_at_levels;
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, UnetConfig};
use cdm::rng::Rng;
use cdm::sample::{ddim, ddpm, DdimOptions, Noise};
use cdm::train::{LrDecay, Precision, RunConfig, TrainConfig, Trainer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const F64_TOLERANCE: f64 = 1e-8;
const F32_TOLERANCE: f64 = 2e-2;
const BF16_TOLERANCE: f64 = 5e-2;

/// The GPU; loads the CUDA backend first, before anything asks libtorch about CUDA.
/// `CDM_GPU_TEST_DEVICE=cpu` puts the CPU in its place: the tests then check their own code on
/// a host without a GPU (CPU against CPU), which `scripts/gpu-check.sh` does there.
fn gpu() -> Device {
    if std::env::var("CDM_GPU_TEST_DEVICE").as_deref() == Ok("cpu") {
        eprintln!("CDM_GPU_TEST_DEVICE=cpu: comparing the CPU with itself");
        return Device::Cpu;
    }
    let gpu = cdm::device::gpu().unwrap_or_else(|e| panic!("no usable GPU: {e}"));
    eprintln!("{} ({} visible), backend {}", gpu.name, gpu.count, gpu.library.display());
    Device::Cuda(0)
}

/// max|gpu − cpu| / max|cpu|.
fn relative_difference(gpu: &Tensor, cpu: &Tensor, what: &str) -> f64 {
    assert_eq!(gpu.size(), cpu.size(), "{what}: shapes differ");
    let gpu = gpu.to_device(Device::Cpu).to_kind(Kind::Double);
    let cpu = cpu.to_kind(Kind::Double);
    let scale = cpu.abs().max().double_value(&[]).max(1e-300);
    (&gpu - &cpu).abs().max().double_value(&[]) / scale
}

/// Asserts max|gpu − cpu| ≤ tol·max|cpu|, and prints how close they are.
fn assert_equivalent(gpu: &Tensor, cpu: &Tensor, tol: f64, what: &str) {
    let off = relative_difference(gpu, cpu, what);
    eprintln!("{what}: relative difference {off:.3e} (tolerance {tol:.0e})");
    assert!(off <= tol, "{what}: GPU and CPU differ by {off:e} relative (tolerance {tol:e})");
}

/// A conditional tiny UNet on 1×16×16 as `kind`.
fn config(kind: ModelKind) -> ModelConfig {
    common::conditional_unet_16(kind)
}

/// The same model on the CPU and on the GPU. Every weight gets seeded noise on top of its
/// initialisation: the heads start at zero, where ε̂ and the logits would not depend on the rest.
fn model_pair(kind: ModelKind, precision: Kind, device: Device) -> [(VarStore, Model); 2] {
    let cfg = config(kind);
    let mut cpu_vs = VarStore::new(Device::Cpu);
    let cpu = Model::new(&cpu_vs.root(), &cfg).unwrap();
    if precision == Kind::Double {
        cpu_vs.double();
    }
    let mut rng = Rng::new(7);
    tch::no_grad(|| {
        for (_, mut var) in cpu_vs.variables() {
            let _ = var.g_add_(&(rng.normal(&var.size(), Kind::Double) * 0.05).to_kind(var.kind()));
        }
    });
    let mut gpu_vs = VarStore::new(device);
    let on_gpu = Model::new(&gpu_vs.root(), &cfg).unwrap();
    if precision == Kind::Double {
        gpu_vs.double();
    }
    gpu_vs.copy(&cpu_vs).unwrap();
    [(cpu_vs, cpu), (gpu_vs, on_gpu)]
}

/// Noisy inputs, levels across the range and labels (some null): the same on both devices.
fn inputs(kind: Kind) -> (Tensor, Tensor, Tensor) {
    let x = Rng::new(1).normal(&[6, 1, 16, 16], kind);
    let t = Tensor::from_slice(&[0i64, 1, 10, 300, 999, 1001]);
    let labels = Tensor::from_slice(&[0i64, 3, 9, 10, 5, 10]);
    (x, t, labels)
}

#[test]
#[ignore = "needs a GPU"]
fn forward_eps_and_likelihood_match_the_cpu() {
    let device = gpu();
    for (kind, tol) in [(Kind::Double, F64_TOLERANCE), (Kind::Float, F32_TOLERANCE)] {
        let [(_cpu_vs, cpu), (_gpu_vs, on_gpu)] = model_pair(ModelKind::Cdm, kind, device);
        let (x, t, labels) = inputs(kind);
        let on = |d: Device| (x.to_device(d), t.to_device(d), labels.to_device(d));
        let (gx, gt, gl) = on(device);
        let (cpu_c, gpu_c) = (cpu.classifier().unwrap(), on_gpu.classifier().unwrap());
        let logits = tch::no_grad(|| cpu_c.logits(&x, Some(&labels), false)).unwrap();
        let logits_gpu = tch::no_grad(|| gpu_c.logits(&gx, Some(&gl), false)).unwrap();
        assert_equivalent(&logits_gpu, &logits, tol, &format!("logits {kind:?}"));
        let eps = cpu.eps(&x, &t, Some(&labels)).unwrap();
        let eps_gpu = on_gpu.eps(&gx, &gt, Some(&gl)).unwrap();
        assert_equivalent(&eps_gpu, &eps, tol, &format!("ε̂ by input gradient {kind:?}"));
        let levels = [0, 1, 500, 1000];
        let log_p = log_prob_at_levels(cpu_c, &x, &levels, Some(&labels)).unwrap();
        let log_p_gpu = log_prob_at_levels(gpu_c, &gx, &levels, Some(&gl)).unwrap();
        assert_equivalent(&log_p_gpu, &log_p, tol, &format!("log p_t(x), one pass, {kind:?}"));
    }
}

#[test]
#[ignore = "needs a GPU"]
fn ddm_forward_matches_the_cpu() {
    let device = gpu();
    let [(_cpu_vs, cpu), (_gpu_vs, on_gpu)] = model_pair(ModelKind::Ddm, Kind::Double, device);
    let (x, t, labels) = inputs(Kind::Double);
    let eps = cpu.eps(&x, &t.clamp(1, 1000), Some(&labels)).unwrap();
    let eps_gpu =
        on_gpu.eps(&x.to_device(device), &t.clamp(1, 1000).to_device(device), Some(&labels.to_device(device))).unwrap();
    assert_equivalent(&eps_gpu, &eps, F64_TOLERANCE, "DDM ε̂");
}

#[test]
#[ignore = "needs a GPU"]
fn sampler_steps_match_the_cpu() {
    let device = gpu();
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let [(_cpu_vs, cpu), (_gpu_vs, on_gpu)] = model_pair(kind, Kind::Double, device);
        let levels = cpu.schedule().sampling_levels(5).unwrap();
        let start = Rng::new(3).normal(&[4, 1, 16, 16], Kind::Double);
        let labels = Tensor::from_slice(&[1i64, 2, 10, 4]);
        let run = |model: &Model, d: Device, ancestral: bool| {
            let l = labels.to_device(d);
            let predictor = |x: &Tensor, t: &Tensor| model.eps(x, t, Some(&l));
            let mut noise = Noise::new(11, 0, 4);
            let x = start.to_device(d);
            if ancestral {
                ddpm(&predictor, model.schedule(), x, &levels, &mut noise, &mut |_| {}).unwrap()
            } else {
                ddim(&predictor, model.schedule(), x, &levels, &DdimOptions::default(), &mut noise, &mut |_| {})
                    .unwrap()
            }
        };
        for ancestral in [false, true] {
            let what = format!("{kind:?} {} 5 steps", if ancestral { "DDPM" } else { "DDIM" });
            assert_equivalent(
                &run(&on_gpu, device, ancestral),
                &run(&cpu, Device::Cpu, ancestral),
                F64_TOLERANCE,
                &what,
            );
        }
    }
}

/// A run on built-in 1×16×16 data, in f64, `steps` long.
fn run_config(kind: ModelKind, steps: u64) -> RunConfig {
    RunConfig {
        data: "uniform:d=1x16x16,g=2".into(),
        model: ModelConfig {
            backbone: BackboneConfig::Unet(UnetConfig { attention_resolutions: vec![8], ..UnetConfig::tiny() }),
            ..config(kind)
        },
        train: TrainConfig {
            steps,
            batch_size: 8,
            precision: Precision::F64,
            lr_decay: LrDecay::Constant,
            sample_every: 0,
            ..Default::default()
        },
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn a_training_step_matches_the_cpu() {
    let device = gpu();
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        // Three CPU steps take the zero-initialised heads away from zero; step 4 then runs on
        // both devices from the same checkpoint (weights, EMA, Adam moments) and the same batch.
        let dir = tempfile::tempdir().unwrap();
        let (cpu_dir, gpu_dir) = (dir.path().join("cpu"), dir.path().join("gpu"));
        let mut cpu = Trainer::open(&cpu_dir, run_config(kind, 4), Device::Cpu).unwrap();
        cpu.run_until(3, &mut |_| {}).unwrap();
        cpu.save().unwrap();
        copy_dir(&cpu_dir, &gpu_dir);
        let mut on_gpu = Trainer::open(&gpu_dir, run_config(kind, 4), device).unwrap();
        assert_eq!(on_gpu.step(), 3, "{kind:?}: the GPU run did not resume");
        let mut reports = Vec::new();
        for trainer in [&mut cpu, &mut on_gpu] {
            trainer.run_until(4, &mut |r| reports.push((r.loss, r.ce, r.mse, r.grad_norm))).unwrap();
        }
        let [(loss, ce, mse, norm), (loss_g, ce_g, mse_g, norm_g)] = reports[..] else { panic!("{reports:?}") };
        for (name, a, b) in [
            ("loss", loss_g, loss),
            ("ce", ce_g.unwrap_or(0.0), ce.unwrap_or(0.0)),
            ("mse", mse_g, mse),
            ("grad norm", norm_g, norm),
        ] {
            assert_equivalent(&Tensor::from(a), &Tensor::from(b), F64_TOLERANCE, &format!("{kind:?} step 4 {name}"));
        }
        let (cpu_file, gpu_file) =
            (TensorFile::load(&paths(&cpu_dir).1).unwrap(), TensorFile::load(&paths(&gpu_dir).1).unwrap());
        // Weights, EMA weights and Adam moments: the worst of them.
        let (worst, name) = cpu_file
            .tensors
            .iter()
            .map(|(name, cpu)| (relative_difference(gpu_file.get(name, &gpu_dir).unwrap(), cpu, name), name))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("a checkpoint with tensors");
        eprintln!(
            "{kind:?} after step 4, {} tensors: worst relative difference {worst:.3e} ({name})",
            cpu_file.tensors.len()
        );
        assert!(worst <= F64_TOLERANCE, "{kind:?} after step 4: {name} differs by {worst:e} relative");
    }
}

#[test]
#[ignore = "needs a GPU"]
fn bf16_on_the_gpu_is_f32_on_the_cpu_within_bf16_tolerance() {
    let device = gpu();
    let [(_cpu_vs, cpu), (_gpu_vs, mut on_gpu)] = model_pair(ModelKind::Cdm, Kind::Float, device);
    on_gpu.set_precision(Precision::Bf16);
    let (x, t, labels) = inputs(Kind::Float);
    let (gx, gt, gl) = (x.to_device(device), t.to_device(device), labels.to_device(device));
    let (cpu_c, gpu_c) = (cpu.classifier().unwrap(), on_gpu.classifier().unwrap());
    let logits = tch::no_grad(|| cpu_c.logits(&x, Some(&labels), false)).unwrap();
    let logits_gpu = tch::no_grad(|| gpu_c.logits(&gx, Some(&gl), false)).unwrap();
    assert_eq!(logits_gpu.kind(), Kind::Float, "the cumsum head did not run in f32");
    assert_equivalent(&logits_gpu, &logits, BF16_TOLERANCE, "logits bf16");
    let eps = cpu.eps(&x, &t, Some(&labels)).unwrap();
    assert_equivalent(&on_gpu.eps(&gx, &gt, Some(&gl)).unwrap(), &eps, BF16_TOLERANCE, "ε̂ by input gradient bf16");
    let levels = [0, 1, 500, 1000];
    let log_p = log_prob_at_levels(cpu_c, &x, &levels, Some(&labels)).unwrap();
    let log_p_gpu = log_prob_at_levels(gpu_c, &gx, &levels, Some(&gl)).unwrap();
    assert_equivalent(&log_p_gpu, &log_p, BF16_TOLERANCE, "log p_t(x) bf16");
    let [(_c, ddm), (_g, mut ddm_gpu)] = model_pair(ModelKind::Ddm, Kind::Float, device);
    ddm_gpu.set_precision(Precision::Bf16);
    let t = t.clamp(1, 1000);
    let eps = ddm.eps(&x, &t, Some(&labels)).unwrap();
    let eps_gpu = ddm_gpu.eps(&gx, &t.to_device(device), Some(&gl)).unwrap();
    assert_equivalent(&eps_gpu, &eps, BF16_TOLERANCE, "DDM ε̂ bf16");
}

#[test]
#[ignore = "needs a GPU"]
fn a_bf16_training_step_on_the_gpu_is_f32_on_the_cpu_within_bf16_tolerance() {
    let device = gpu();
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        // Both runs start from the weights of a one-step CPU run (init_from), so that other
        // tests drawing from libtorch's global generator meanwhile cannot change them.
        let dir = tempfile::tempdir().unwrap();
        let start = dir.path().join("start");
        Trainer::open(&start, run_config(kind, 1), Device::Cpu).unwrap().run(&mut |_| {}).unwrap();
        let mut reports = Vec::new();
        for (name, precision, on) in [("cpu", Precision::F32, Device::Cpu), ("gpu", Precision::Bf16, device)] {
            let mut config = run_config(kind, 1);
            config.train.precision = precision;
            config.train.init_from = Some(start.clone());
            let mut trainer = Trainer::open(&dir.path().join(name), config, on).unwrap();
            trainer.run(&mut |r| reports.push((r.loss, r.grad_norm))).unwrap();
        }
        let [(loss, norm), (loss_gpu, norm_gpu)] = reports[..] else { panic!("{reports:?}") };
        assert_equivalent(&Tensor::from(loss_gpu), &Tensor::from(loss), BF16_TOLERANCE, &format!("{kind:?} loss bf16"));
        assert_equivalent(
            &Tensor::from(norm_gpu),
            &Tensor::from(norm),
            BF16_TOLERANCE,
            &format!("{kind:?} grad norm bf16"),
        );
    }
}

/// A world of one over NCCL on the GPU (the backend of csrc/nccl.cpp, built by
/// scripts/build-cuda.sh and found at `CDM_CUDA_LIBRARY` or beside the test binary): every
/// collective that training, the shared evaluation and the split sampler use leaves its tensor
/// as it was, on the GPU and from the CPU. With `CDM_GPU_TEST_DEVICE=cpu` the same runs on Gloo.
#[test]
#[ignore = "needs a GPU"]
fn nccl_collectives_with_a_world_of_one() {
    let device = gpu();
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let launch = Launch { rank: 0, world_size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: port };
    let group = ProcessGroup::join(&launch, device, std::time::Duration::from_secs(120)).unwrap();
    let expected = if device == Device::Cpu { Backend::Gloo } else { Backend::Nccl };
    assert_eq!(group.backend(), expected);
    for on in [device, Device::Cpu] {
        let x = Tensor::randn([3, 1000], (Kind::Float, on));
        let y = x.copy();
        group.all_reduce_sum(&y).unwrap();
        assert_eq!(relative_difference(&y, &x.to_device(Device::Cpu), "all-reduce"), 0.0);
        group.broadcast(&y, 0).unwrap();
        assert_eq!(relative_difference(&y, &x.to_device(Device::Cpu), "broadcast"), 0.0);
        let whole = group.gather_rows(Shard::whole(3), Ok(Some(x.copy())), x.zeros_like()).unwrap();
        assert_eq!(relative_difference(&whole, &x.to_device(Device::Cpu), "gathered rows"), 0.0);
    }
    group.barrier().unwrap();
    assert!(group.any(true).unwrap() && !group.any(false).unwrap());
    assert_eq!(group.broadcast_bytes(Some(b"config")).unwrap(), b"config");
}

/// Network calls replayed from CUDA graphs (`GraphedModel`, csrc/cuda_graph.cpp) give what the
/// plain calls give, call after call with new inputs (a replay reads the captured call's input
/// buffers, so a stale copy would show), for both kinds in f64 and in bf16; and a whole guided,
/// parallel DDIM run through `draw` with `graphs` on gives the samples it gives without them.
/// The same kernels run in the same order, so only kernels that sum in a varying order (atomics
/// in some of cuDNN's backward passes) could differ: f64's tolerance, and in bf16 a fifth of
/// bf16's, far below the O(1) gap that a stale input would leave. With `CDM_GPU_TEST_DEVICE=cpu` every call
/// runs as it is and only the comparison's own code is checked.
#[test]
#[ignore = "needs a GPU"]
fn cuda_graph_replays_match_the_plain_calls() {
    use cdm::batches::Batches;
    use cdm::cuda_graph::{GraphedModel, EAGER_CALLS};
    use cdm::predictor::LabelledPredictor;
    use cdm::sample::{draw, ParallelOptions, SampleOptions};
    let device = gpu();
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        for precision in [Precision::F64, Precision::Bf16] {
            let weights = if precision == Precision::F64 { Kind::Double } else { Kind::Float };
            let [_, (_vs, mut model)] = model_pair(kind, weights, device);
            model.set_precision(precision);
            let graphed = GraphedModel::new(&model, device);
            for call in 0..EAGER_CALLS as u64 + 3 {
                let x = Rng::new(20 + call).normal(&[4, 1, 16, 16], weights).to_device(device);
                let t = Tensor::from_slice(&[1i64, 30, 500, 999]).roll([call as i64], [0]).to_device(device);
                let labels = Tensor::from_slice(&[0i64, 10, 4, 7]).roll([call as i64], [0]).to_device(device);
                let replayed = graphed.eps_given(&x, &t, Some(&labels)).unwrap();
                let plain = model.eps(&x, &t, Some(&labels)).unwrap();
                let what = format!("{kind:?} {precision:?} call {call}");
                let tol = if precision == Precision::F64 { F64_TOLERANCE } else { BF16_TOLERANCE / 5.0 };
                assert_equivalent(&replayed, &plain.to_device(Device::Cpu), tol, &what);
            }
            assert_eq!(graphed.graphs(), usize::from(device.is_cuda()), "{kind:?} {precision:?}: graphs captured");
        }
        let [_, (_vs, model)] = model_pair(kind, Kind::Double, device);
        let opts = SampleOptions {
            steps: 10,
            guidance: 1.0,
            parallel: Some(ParallelOptions { window: 4, ..ParallelOptions::default() }),
            ..SampleOptions::ddim(10)
        };
        let plain = Batches::new(3, (Kind::Double, device));
        let samples = |batches: &Batches| draw(&model, 5, &opts, batches).unwrap().x;
        let what = format!("{kind:?} guided parallel DDIM-10, 5 samples in batches of 3");
        assert_equivalent(&samples(&Batches { graphs: true, ..plain }), &samples(&plain), F64_TOLERANCE, &what);
    }
}

/// Training steps replayed from a CUDA graph (`Trainer::set_cuda_graphs`, src/train/graphed.rs)
/// train as the plain steps do: two runs of one config, one of them replaying from its third
/// step, report the same loss, cross-entropy, squared error and gradient norm at every step and
/// end with the same weights, EMA weights and Adam moments, for both kinds in f64 and in bf16. A
/// replay that read a stale input (the batch, the levels, the noise) or kept the last step's
/// gradients would be off by O(1). Tolerances as for the network calls' graphs above. With
/// `CDM_GPU_TEST_DEVICE=cpu` both runs are plain and only the comparison is checked.
#[test]
#[ignore = "needs a GPU"]
fn cuda_graph_training_steps_match_the_plain_steps() {
    let device = gpu();
    let steps = 6;
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        for precision in [Precision::F64, Precision::Bf16] {
            let mut config = run_config(kind, steps);
            config.train.precision = precision;
            let dir = tempfile::tempdir().unwrap();
            // Both runs start from one checkpoint: the weights' initialisation draws from
            // libtorch's global generator, which tests running beside this one draw from too.
            let plain_dir = dir.path().join("false");
            Trainer::open(&plain_dir, config.clone(), device).unwrap().save().unwrap();
            copy_dir(&plain_dir, &dir.path().join("true"));
            let mut reports = Vec::new();
            for graphs in [false, true] {
                let mut trainer = Trainer::open(&dir.path().join(graphs.to_string()), config.clone(), device).unwrap();
                trainer.set_cuda_graphs(graphs);
                let mut run = Vec::new();
                for step in 1..=steps {
                    trainer
                        .run_until(step, &mut |r| run.extend([r.loss, r.ce.unwrap_or(0.0), r.mse, r.grad_norm]))
                        .unwrap();
                }
                assert_eq!(trainer.steps_graphed(), graphs && device.is_cuda(), "{kind:?} {precision:?}: graphed");
                reports.push(Tensor::from_slice(&run).reshape([steps as i64, 4]));
            }
            let what = format!("{kind:?} {precision:?}");
            let tol = if precision == Precision::F64 { F64_TOLERANCE } else { BF16_TOLERANCE / 5.0 };
            assert_equivalent(&reports[1], &reports[0], tol, &format!("{what}: loss, ce, mse, grad norm of each step"));
            let [plain, graphed] = ["false", "true"].map(|d| TensorFile::load(&paths(&dir.path().join(d)).1).unwrap());
            let (worst, name) = plain
                .tensors
                .iter()
                .map(|(name, cpu)| (relative_difference(graphed.get(name, dir.path()).unwrap(), cpu, name), name))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .expect("a checkpoint with tensors");
            eprintln!("{what}: weights, EMA and moments, worst relative difference {worst:.3e} ({name})");
            assert!(worst <= tol, "{what}: {name} differs by {worst:e} relative (tolerance {tol:e})");
        }
    }
}
