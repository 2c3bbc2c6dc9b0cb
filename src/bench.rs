//! What `cdm bench` measures: one training step and one sampling step (one ε̂ for the batch) in Rust against
//! the same steps in PyTorch (`bench/reference.py`) on the same device, alternated in rounds so
//! both see the same machine load; in a chosen precision (bf16: autocast on both sides), with
//! the FLOPs of each step counted from the network's shapes, checked against PyTorch's FLOP
//! counter, and the achieved TFLOP/s.
//!
//! The count of a step is a multiple of one forward pass F (its convolutions, linear layers
//! and attention products; [`BackboneConfig::forward_flops`]), because every backward pass of
//! a product costs two products of its size, one per operand:
//! - DDM training: forward F, backward to activations and weights 2F: 3F.
//! - CDM training: forward F; the input gradient (to activations only) F; the backward of the
//!   loss through both, to activations and weights: 2F for the forward and 2F for the input
//!   gradient's products: 6F.
//! - DDM sampling: F. CDM sampling: forward and input gradient, 2F.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::cuda_graph::{GraphedModel, EAGER_CALLS};
use crate::data::{check_held, Dataset};
use crate::distributed::{ProcessGroup, Shard};
use crate::loss::LossWeights;
use crate::model::{Model, ModelConfig, ModelKind};
use crate::nets::{BackboneConfig, ConvNetConfig, Head, MlpConfig, UnetConfig};
use crate::predictor::LabelledPredictor;
use crate::rng::Rng;
use crate::run_lock::RunLock;
use crate::schedule::{Schedule, ScheduleConfig};
use crate::train::{LrDecay, Precision, RunConfig, TrainConfig, Trainer};
use crate::{Error, Result};

/// The fixed sizes benchmarked.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BenchSize {
    /// 2-D points, MLP 256 wide with 3 blocks, batch 1024, T = 1000.
    Mlp2d,
    /// Uniform cube 3×32×32, ConvNet 16 channels with 1 block, batch 64, T = 1000 (the Fig. 3 runs).
    Cube,
    /// 1×28×28 (MNIST's shape), tiny UNet as a CDM, batch 32, T = 1000.
    UnetCdm,
    /// The same UNet as a DDM.
    UnetDdm,
    /// 1×28×28, the tiny UNet's encoder alone (ConvNet 32 channels ×1,2,2, one block each) as a
    /// CDM, batch 32, T = 1000: the encoder-only CDM.
    ConvnetCdm,
    /// 3×32×32, the paper's CIFAR-10 UNet (`--preset cifar10`) as a CDM,
    /// batch 128 as in the paper (on a CPU, try `--batch 8`), T = 1000.
    Cifar10Cdm,
    /// The same UNet as a DDM.
    Cifar10Ddm,
}

impl BenchSize {
    pub fn name(self) -> &'static str {
        match self {
            BenchSize::Mlp2d => "mlp2d",
            BenchSize::Cube => "cube",
            BenchSize::UnetCdm => "unet-cdm",
            BenchSize::UnetDdm => "unet-ddm",
            BenchSize::ConvnetCdm => "convnet-cdm",
            BenchSize::Cifar10Cdm => "cifar10-cdm",
            BenchSize::Cifar10Ddm => "cifar10-ddm",
        }
    }

    fn is_ddm(self) -> bool {
        matches!(self, BenchSize::UnetDdm | BenchSize::Cifar10Ddm)
    }
}

/// The H200's dense bf16 matrix-product rate (a plain bf16 matrix product, measured on an H200
/// GPU host), the default peak on CUDA.
const H200_BF16_TFLOPS: f64 = 790.0;

/// FLOPs of one step of each kind for a batch: (training, sampling), and F, one forward pass
/// for one point (see the module docs for the multipliers).
fn step_flops(size: BenchSize, batch: usize) -> Result<(f64, f64, f64)> {
    let model = run_config(size, None).model;
    let head = match model.kind {
        ModelKind::Cdm => Head::Levels(Schedule::new(model.schedule)?.num_classes() as i64),
        ModelKind::Ddm => Head::Noise,
    };
    let forward = model.backbone.forward_flops(&model.data_shape, head)?;
    let (train, sample) = match model.kind {
        ModelKind::Cdm => (6.0, 2.0),
        ModelKind::Ddm => (3.0, 1.0),
    };
    let batch = batch as f64;
    Ok((train * forward * batch, sample * forward * batch, forward))
}

/// The run a size times (never saved: only its steps are timed), with `batch` instead of its own.
pub fn run_config(size: BenchSize, batch: Option<usize>) -> RunConfig {
    run_config_in(size, batch, Precision::F32)
}

fn run_config_in(size: BenchSize, batch: Option<usize>, precision: Precision) -> RunConfig {
    let (data, backbone, data_shape, batch_size) = match size {
        BenchSize::Mlp2d => ("gmm2d", BackboneConfig::Mlp(MlpConfig::default()), vec![2], 1024),
        BenchSize::Cube => {
            ("uniform:d=3x32x32,g=0.5", BackboneConfig::ConvNet(ConvNetConfig::cube()), vec![3, 32, 32], 64)
        }
        BenchSize::UnetCdm | BenchSize::UnetDdm => {
            ("uniform:d=1x28x28,g=2", BackboneConfig::Unet(UnetConfig::tiny()), vec![1, 28, 28], 32)
        }
        BenchSize::ConvnetCdm => {
            ("uniform:d=1x28x28,g=2", BackboneConfig::ConvNet(ConvNetConfig::default()), vec![1, 28, 28], 32)
        }
        BenchSize::Cifar10Cdm | BenchSize::Cifar10Ddm => {
            ("uniform:d=3x32x32,g=2", BackboneConfig::Unet(UnetConfig::cifar10()), vec![3, 32, 32], 128)
        }
    };
    let batch_size = batch.unwrap_or(batch_size);
    let kind = if size.is_ddm() { ModelKind::Ddm } else { ModelKind::Cdm };
    RunConfig {
        data: data.into(),
        model: ModelConfig {
            kind,
            schedule: ScheduleConfig::default(),
            backbone,
            data_shape,
            gaussian_base: false,
            base_per_class: false,
        },
        // Never reaches a checkpoint or log line: only steps are timed.
        train: TrainConfig {
            steps: u64::MAX,
            batch_size,
            lr_decay: LrDecay::Constant,
            checkpoint_every: u64::MAX,
            log_every: u64::MAX,
            precision,
            ..Default::default()
        },
    }
}

/// The PyTorch script's settings for the same size, batch and device: the network read off
/// [`run_config`], so the two sides cannot drift apart.
fn reference_config(plan: &Plan, batch: usize, device: Device) -> serde_json::Value {
    let (size, steps) = (plan.size, plan.steps);
    let model = run_config(size, None).model;
    // The reference draws its points uniformly on [−width/2, width/2]^D: the uniform data's
    // width (`mlp2d` trains on gmm2d, which spans about the unit square).
    let width = match size {
        BenchSize::Mlp2d => 1.0,
        BenchSize::Cube => 0.5,
        _ => 2.0,
    };
    let mut config = json!({
        "timesteps": model.schedule.timesteps, "ce_weight": 1.0, "warmup": 3, "steps": steps, "batch": batch,
        "device": if device.is_cuda() { "cuda" } else { "cpu" }, "shape": model.data_shape, "width": width,
        "model": if size.is_ddm() { "ddm" } else { "cdm" },
        "precision": plan.precision, "best": plan.reference_best || device.is_cuda(),
    });
    let backbone = match &model.backbone {
        BackboneConfig::Mlp(m) => json!({"backbone": "mlp", "hidden": m.hidden, "blocks": m.blocks}),
        BackboneConfig::ConvNet(c) => json!({
            "backbone": "convnet", "channels": c.channels, "mult": c.channel_mult, "blocks": c.blocks, "groups": c.groups
        }),
        BackboneConfig::Unet(u) => json!({
            "backbone": "unet", "channels": u.channels, "mult": u.channel_mult, "blocks": u.res_blocks,
            "groups": u.groups, "attention": u.attention_resolutions, "dropout": u.dropout,
            "head_width": u.head_width
        }),
    };
    if let (Some(merged), Some(network)) = (config.as_object_mut(), backbone.as_object()) {
        merged.extend(network.clone());
    }
    config
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of `v`, or none of an empty one (a measurement no round could take).
fn median_if_any(v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| median(v))
}

/// Median milliseconds of one step: (training, sampling).
type Timing = (f64, f64);

/// Median milliseconds of the nested parts of a training step, each timed on its own with the
/// same batch: the part of the step it names is its difference from the one before.
#[derive(Clone, Copy)]
struct Phases {
    /// The network's forward pass (with the graph for the weights' gradients).
    forward: f64,
    /// A CDM's forward and its input gradient with `create_graph` (the first backward); the
    /// forward again for a DDM.
    input_gradient: f64,
    /// The whole loss and its backward pass to the weights (a CDM's second backward).
    loss_backward: f64,
    /// A whole training step (the loss, the backward pass, the optimiser, the EMA, the batch).
    step: f64,
}

/// Milliseconds of one call of `f`, the device's queue drained before and after.
fn time_once(device: Device, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    crate::device::synchronize(device);
    let start = Instant::now();
    f()?;
    crate::device::synchronize(device);
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Times the phases of `trainer`'s training step on one batch of Gaussian points, each phase
/// and a whole step in turn in every repetition, so that all see the same machine load.
fn time_phases(trainer: &mut Trainer, config: &RunConfig, steps: u64, device: Device) -> Result<Phases> {
    let train = &config.train;
    let shape = [&[train.batch_size as i64][..], &config.model.data_shape].concat();
    let x = Rng::new(1).normal(&shape, train.precision.kind()).to_device(device);
    // Levels 1..=T, where both kinds are trained.
    let t = (Rng::new(2).integers(train.batch_size, trainer.model().schedule().timesteps()) + 1).to_device(device);
    let weights = LossWeights {
        ce: train.ce_weight,
        mse: train.mse_weight,
        min_snr: train.min_snr,
        cdl: None,
        low_levels: train.low_levels,
        level_strides: train.level_strides.clone(),
    };
    let mut times: [Vec<f64>; 4] = Default::default();
    for _ in 0..steps {
        let model = trainer.model();
        let (forward, input_gradient) = match model {
            Model::Cdm(classifier) => (
                time_once(device, &mut || classifier.logits(&x, None, true).map(drop))?,
                time_once(device, &mut || classifier.forward(&x, &t, None, true).map(drop))?,
            ),
            Model::Ddm(denoiser) => {
                let forward = time_once(device, &mut || denoiser.eps(&x, &t, None, true).map(drop))?;
                (forward, forward)
            }
        };
        let loss_backward = time_once(device, &mut || {
            model.loss(&x, None, &weights, Shard::whole(x.size()[0] as usize), &mut Rng::new(3))?.total.backward();
            Ok(())
        })?;
        let next = trainer.step() + 1;
        let step = time_once(device, &mut || trainer.run_until(next, &mut |_| {}))?;
        for (all, one) in times.iter_mut().zip([forward, input_gradient, loss_backward, step]) {
            all.push(one);
        }
    }
    let [forward, input_gradient, loss_backward, step] = times.map(median);
    Ok(Phases { forward, input_gradient, loss_backward, step })
}

/// What one run of the Rust side measures.
struct RustRun {
    /// Median milliseconds of a training and a sampling step, each waited for.
    timing: Timing,
    /// Milliseconds per training step when steps are queued back to back.
    queued: f64,
    /// The training step's parts, when the plan profiles.
    phases: Option<Phases>,
    /// Median milliseconds of the sampling step replayed from a CUDA graph (CUDA only; none
    /// when the capture failed, which the log says).
    graphed_sample: Option<f64>,
    /// The training step with its loss and backward pass replayed from a CUDA graph: median
    /// milliseconds waited for, and queued (CUDA only; none when the capture failed).
    graphed_train: Option<(f64, f64)>,
}

/// Rust's timings: median milliseconds of a training step and a sampling step, each waited
/// for (the sampling step also replayed from a CUDA graph on CUDA); and the mean of a training
/// step in a run of `steps` that reads nothing back but at its end (the steps queue on a GPU as
/// in a real run).
fn time_rust(plan: &Plan, device: Device, group: Option<&Arc<ProcessGroup>>) -> Result<RustRun> {
    let (size, steps) = (plan.size, plan.steps);
    let config = run_config_in(size, plan.batch, plan.precision);
    check_held("batch", config.train.batch_size, &config.model.data_shape)?;
    let dir = std::env::temp_dir().join(format!("cdm-bench-{}", std::process::id()));
    let mut trainer = match group {
        None => Trainer::open(&dir, config.clone(), device)?,
        Some(group) => {
            let data = Dataset::open(&config.data)?;
            let lock = (group.rank() == 0).then(|| RunLock::acquire(&dir)).transpose()?;
            Trainer::open_in_job(&dir, lock, config.clone(), data, device, group.clone())?
        }
    };
    trainer.run_until(3, &mut |_| {})?;
    let (train, queued) = time_training(&mut trainer, steps, device)?;
    let shape = [&[config.train.batch_size as i64][..], &config.model.data_shape].concat();
    let x = Rng::new(0).normal(&shape, config.train.precision.kind()).to_device(device);
    let level = Tensor::full([shape[0]], 500, (Kind::Int64, device));
    let time_sampling = |net: &dyn LabelledPredictor| -> Result<f64> {
        let mut sample = Vec::new();
        for _ in 0..steps {
            let start = Instant::now();
            let eps = tch::no_grad(|| net.eps_given(&x, &level, None))?;
            eps.sum(Kind::Double).double_value(&[]);
            sample.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(sample))
    };
    let sample = time_sampling(trainer.model())?;
    let graphed_sample = match device.is_cuda() {
        true => {
            let graphed = GraphedModel::new(trainer.model(), device);
            for _ in 0..=EAGER_CALLS {
                let _ = tch::no_grad(|| graphed.eps_given(&x, &level, None))?;
            }
            let ms = time_sampling(&graphed)?;
            (graphed.graphs() > 0).then_some(ms)
        }
        false => None,
    };
    let phases = plan.profile.then(|| time_phases(&mut trainer, &config, steps, device)).transpose()?;
    let graphed_train = match device.is_cuda() {
        true => {
            trainer.set_cuda_graphs(true);
            // Two steps as they are, then the capture.
            trainer.run_until(trainer.step() + EAGER_CALLS as u64 + 1, &mut |_| {})?;
            let (train, queued) = time_training(&mut trainer, steps, device)?;
            trainer.steps_graphed().then_some((train, queued))
        }
        false => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RustRun { timing: (train, sample), queued, phases, graphed_sample, graphed_train })
}

/// The median milliseconds of `steps` training steps each waited for, then the mean of
/// `steps` more queued back to back (read back at their end only).
fn time_training(trainer: &mut Trainer, steps: u64, device: Device) -> Result<(f64, f64)> {
    let mut train = Vec::new();
    for _ in 0..steps {
        let next = trainer.step() + 1;
        train.push(time_once(device, &mut || trainer.run_until(next, &mut |_| {}))?);
    }
    let end = trainer.step() + steps;
    let queued = time_once(device, &mut || trainer.run_until(end, &mut |_| {}))? / steps as f64;
    Ok((median(train), queued))
}

/// What one run of `bench/reference.py` reports.
struct Reference {
    /// Median milliseconds, like for like (the same precision, the same memory format).
    timing: Timing,
    /// PyTorch's best eager setting (bf16 autocast, channels-last), when it was timed.
    best: Option<Timing>,
    /// FLOPs of a training and a sampling step by `torch.utils.flop_counter`, when counted.
    flops: Option<(f64, f64)>,
    version: String,
    params: serde_json::Value,
}

fn time_reference(plan: &Plan, device: Device) -> Result<Reference> {
    let batch = plan.batch.unwrap_or(run_config(plan.size, None).train.batch_size);
    let out = Command::new(&plan.python)
        .arg(&plan.script)
        .arg(reference_config(plan, batch, device).to_string())
        .output()
        .map_err(|e| Error::io(&plan.script, e).within(format!("running {}", plan.python)))?;
    let failed = |why: String| Error::Data(format!("{}: {why}", plan.script.display()));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("failed (does it import torch 2.11? try `make bench`):\n{stderr}")));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its output is not JSON: {e}")))?;
    let field = |name: &str| report[name].as_f64().ok_or_else(|| failed(format!("its output lacks {name}")));
    let pair = |a: &str, b: &str| report[a].as_f64().zip(report[b].as_f64());
    Ok(Reference {
        timing: (field("median_ms")?, field("sample_ms")?),
        best: pair("best_median_ms", "best_sample_ms"),
        flops: pair("train_flops", "sample_flops"),
        version: report["torch"].as_str().unwrap_or("?").to_string(),
        params: report["params"].clone(),
    })
}

/// Median milliseconds of one all-reduce of a buffer as large as `size`'s gradients.
fn time_all_reduce(group: &ProcessGroup, plan: &Plan, params: usize, device: Device) -> Result<f64> {
    let buffer = Tensor::ones([params as i64], (plan.precision.kind(), device));
    let times: Result<Vec<f64>> =
        (0..plan.steps).map(|_| time_once(device, &mut || group.all_reduce_sum(&buffer))).collect();
    Ok(median(times?))
}

/// What to time, how often, and against what.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: BenchSize,
    /// Batch size instead of the size's own.
    pub batch: Option<usize>,
    /// Timed steps per round (after 3 untimed ones).
    pub steps: u64,
    /// Rounds, each timing Rust and PyTorch (Rust first in even rounds, PyTorch in odd ones).
    pub rounds: usize,
    /// Python interpreter that imports torch 2.11, and the reference script it runs.
    pub python: String,
    pub script: PathBuf,
    /// Time PyTorch's side too.
    pub reference: bool,
    /// Also split Rust's training step into phases.
    pub profile: bool,
    pub precision: Precision,
    /// Peak TFLOP/s the achieved rate is a share of (on CUDA, an H200's bf16 unless given).
    pub peak_tflops: Option<f64>,
    /// Also time PyTorch's best eager setting (bf16 autocast, channels-last); always on CUDA.
    pub reference_best: bool,
}

/// Times `plan` on `device` (a rank of `group` for a data-parallel step) and returns the
/// report: milliseconds per step on each side, their ratios, FLOPs and rates.
pub fn run(plan: &Plan, device: Device, group: Option<&Arc<ProcessGroup>>) -> Result<serde_json::Value> {
    // Rank 0 alone speaks for a job.
    let speaks = group.is_none_or(|g| g.rank() == 0);
    let (mut rust, mut queued, mut torch, mut best) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut reference = None;
    let (mut phases, mut graphed, mut graphed_train) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.rounds.max(1) {
        // Odd rounds run PyTorch first, so that whatever the first run of a round meets (a
        // cold cache, a clock not yet boosted) falls on both sides alike.
        let rust_first = round % 2 == 0;
        for rust_turn in [rust_first, !rust_first] {
            if rust_turn {
                let run = time_rust(plan, device, group)?;
                rust.push(run.timing);
                queued.push(run.queued);
                phases.extend(run.phases);
                graphed.extend(run.graphed_sample);
                graphed_train.extend(run.graphed_train);
            } else if plan.reference {
                let run = time_reference(plan, device)?;
                torch.push(run.timing);
                best.extend(run.best);
                reference = Some(run);
            }
        }
        let show = |(train, sample): Timing| format!("train {train:.1} ms, sample {sample:.1} ms");
        if speaks {
            let torch = torch.last().map_or(String::new(), |&t| format!("; pytorch {}", show(t)));
            tracing::info!("round {round}: rust {}{torch}", show(rust[round]));
        }
    }
    let medians = |v: &[Timing]| (median(v.iter().map(|t| t.0).collect()), median(v.iter().map(|t| t.1).collect()));
    let (rust_train, rust_sample) = medians(&rust);
    let params = {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        Model::new(&vs.root(), &run_config(plan.size, None).model)?;
        vs.trainable_variables().iter().map(|v| v.numel()).sum::<usize>()
    };
    let batch = run_config(plan.size, plan.batch).train.batch_size;
    let (train_flops, sample_flops, forward_flops) = step_flops(plan.size, batch)?;
    let peak = plan.peak_tflops.or(device.is_cuda().then_some(H200_BF16_TFLOPS));
    // TFLOP/s of `flops` in `ms` milliseconds, and its share of the peak.
    let rate = |flops: f64, ms: f64| {
        let tflops = flops / ms * 1e-9;
        json!({"tflops": tflops, "share_of_peak": peak.map(|p| tflops / p)})
    };
    let mut report = json!({
        "size": plan.size.name(), "device": if device.is_cuda() { "cuda" } else { "cpu" },
        "precision": plan.precision, "batch": batch, "threads": tch::get_num_threads(), "params": params,
        "rust_ms_per_step": rust_train, "rust_ms_per_sample_step": rust_sample,
        "rust_ms_per_step_queued": median(queued.clone()),
        "flops": {
            "forward_per_point": forward_flops, "train_step": train_flops, "sample_step": sample_flops,
            "multipliers": if plan.size.is_ddm() { "train 3F, sample F" } else { "train 6F, sample 2F" },
        },
        "peak_tflops": peak,
        "rust_train_rate": rate(train_flops, rust_train),
        "rust_train_rate_queued": rate(train_flops, median(queued)),
        "rust_sample_rate": rate(sample_flops, rust_sample),
    });
    if device.is_cuda() {
        let graphed = median_if_any(graphed);
        report["rust_ms_per_sample_step_cuda_graph"] = json!(graphed);
        report["rust_sample_rate_cuda_graph"] = json!(graphed.map(|ms| rate(sample_flops, ms)));
        let (waited, queued): (Vec<f64>, Vec<f64>) = graphed_train.into_iter().unzip();
        let (waited, queued) = (median_if_any(waited), median_if_any(queued));
        report["rust_ms_per_step_cuda_graph"] = json!(waited);
        report["rust_ms_per_step_queued_cuda_graph"] = json!(queued);
        report["rust_train_rate_queued_cuda_graph"] = json!(queued.map(|ms| rate(train_flops, ms)));
    }
    if !phases.is_empty() {
        let part = |f: fn(&Phases) -> f64| median(phases.iter().map(f).collect());
        let (forward, input_gradient, loss_backward, step) =
            (part(|p| p.forward), part(|p| p.input_gradient), part(|p| p.loss_backward), part(|p| p.step));
        report["rust_phases_ms"] = json!({
            "forward": forward,
            "input_gradient": input_gradient - forward,
            "loss_and_backward": loss_backward - input_gradient,
            "optimizer_and_rest": step - loss_backward,
            "step": step,
        });
    }
    if let Some(run) = reference {
        let (torch_train, torch_sample) = medians(&torch);
        report["pytorch_ms_per_step"] = json!(torch_train);
        report["pytorch_ms_per_sample_step"] = json!(torch_sample);
        report["pytorch_version"] = json!(run.version);
        report["pytorch_params"] = run.params;
        report["rust_over_pytorch"] = json!(rust_train / torch_train);
        report["rust_over_pytorch_sampling"] = json!(rust_sample / torch_sample);
        report["pytorch_train_rate"] = rate(train_flops, torch_train);
        if let Some((train, sample)) = run.flops {
            report["pytorch_flops"] = json!({"train_step": train, "sample_step": sample});
            report["flops_rust_over_pytorch"] = json!({"train": train_flops / train, "sample": sample_flops / sample});
        }
        if !best.is_empty() {
            let (best_train, best_sample) = medians(&best);
            report["pytorch_best_eager"] = json!({
                "setting": "bf16 autocast, channels-last",
                "ms_per_step": best_train, "ms_per_sample_step": best_sample,
                "train_rate": rate(train_flops, best_train),
                "rust_over_best": rust_train / best_train, "rust_over_best_sampling": rust_sample / best_sample,
            });
        }
    }
    if let Some(group) = group {
        let all_reduce = time_all_reduce(group, plan, params, device)?;
        report["ranks"] = json!({
            "world_size": group.world_size(), "backend": format!("{:?}", group.backend()).to_lowercase(), "batch_per_rank": batch / group.world_size(),
            "all_reduce_ms": all_reduce, "all_reduce_share_of_step": all_reduce / rust_train,
        });
    }
    Ok(report)
}
