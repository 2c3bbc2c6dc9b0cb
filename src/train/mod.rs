//! Training a classification diffusion model (Yadin et al. 2024, arXiv:2402.10095,
//! Algorithm 1), or its DDM baseline: Adam with warm-up and decay, EMA weights, optional
//! gradient clipping, atomic checkpoints and exact resume (each step's randomness is derived
//! from the seed and the step number, and the optimiser state is saved). A run holds its
//! folder's lock ([`crate::run_lock`]) and stops at a checkpoint when a signal asks it to
//! ([`crate::signals`]). The settings are in
//! [`config`], loading trained models in [`loading`], the log in [`log`], and the optimiser in
//! [`crate::optim`].
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::checkpoint::{self, TensorFile};
use crate::data::loader::{Batch, BatchOptions, Batches};
use crate::data::Dataset;
use crate::distributed::{ProcessGroup, Shard};
use crate::loss::LossWeights;
use crate::model::{Model, ModelKind};
use crate::optim::{ema_update, grad_norm, Adam, FlatVars};
use crate::plot::image_grid;
use crate::rng::Rng;
use crate::run_lock::RunLock;
use crate::sample::{draw, SampleOptions};
use crate::signals::stop_requested;
use crate::{Error, Result};

pub mod config;
pub mod graphed;
pub mod loading;
pub mod log;
pub mod monitor;

pub mod resolve;

pub use config::{DataDefaults, LrDecay, Precision, RunConfig, TrainConfig};
pub use loading::data_logsnr_proposal;
pub use log::{read_log, StepReport};
pub use monitor::FidMonitor;

use crate::checkpoint::run::{build_seeded_pair, saved_run, step_of};
use graphed::{GraphedSteps, StepInputs};
use loading::{init_weights, BASE_FIT_POINTS};
use log::LogFile;

/// Trained variables of `vs` (not a Gaussian base's statistics) sorted by name, so every
/// traversal has one fixed order.
fn trained_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<_> = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The first step of a [`Trainer::run_until`] call with a non-finite loss or gradient norm,
/// kept on the device so that noting it needs no host sync: f64 [3], (step or −1, loss, norm).
struct FirstNonFinite(Tensor);

impl FirstNonFinite {
    fn new(device: Device) -> Self {
        FirstNonFinite(Tensor::full([3], -1.0, (Kind::Double, device)))
    }

    /// Notes `step` (1-based, as reported) if its loss or gradient norm is not finite and none
    /// was before.
    fn observe(&mut self, step: u64, loss: &Tensor, norm: &Tensor) {
        let seen = Tensor::stack(&[loss.detach().to_kind(Kind::Double), norm.shallow_clone()], 0);
        let first = seen.isfinite().all().logical_not().logical_and(&self.0.get(0).lt(0.0));
        let now = Tensor::cat(&[Tensor::full([1], step as f64, (Kind::Double, seen.device())), seen], 0);
        self.0 = now.where_self(&first, &self.0);
    }

    /// The error for a noted step, given the three values read back at step `read`: it names
    /// the value that overflowed (a finite loss with an infinite gradient norm is the gradient's
    /// fault), and the step whose numbers were read, since the check waits for a read.
    fn check(&self, values: &[f64], read: u64) -> Result<()> {
        let &[step, loss, norm] = values else { return Ok(()) };
        if step < 0.0 {
            return Ok(());
        }
        let what = if loss.is_finite() {
            format!("the gradient norm is {norm} (the loss was {loss})")
        } else {
            format!("the loss is {loss}")
        };
        let read = if read == step as u64 { String::new() } else { format!("; noticed at step {read}") };
        Err(Error::NonFinite { step: step as u64, what: format!("{what}{read}") })
    }
}

/// A training run in a directory: created fresh, or resumed from the checkpoint there.
pub struct Trainer {
    pub config: RunConfig,
    dir: PathBuf,
    data: Dataset,
    device: Device,
    vs: VarStore,
    model: Model,
    ema_vs: VarStore,
    /// The model with the EMA weights, for the periodic sample grids.
    ema_model: Model,
    /// The trained variables of `vs`, in one buffer with their gradients.
    params: FlatVars,
    /// The same variables of `ema_vs`, laid out alike.
    ema: FlatVars,
    adam: Adam,
    step: u64,
    /// Training seconds of every session up to `step` (saved in the checkpoint).
    seconds: f64,
    /// Loaded at the first FID step.
    fid: Option<FidMonitor>,
    /// The data-parallel job this trainer is a rank of, if any: the gradients are summed over
    /// its ranks, and only rank 0 writes into the run's directory.
    group: Option<Arc<ProcessGroup>>,
    /// The rows of each step's batch this process computes.
    shard: Shard,
    /// Training steps replayed from a CUDA graph, when asked for ([`Trainer::set_cuda_graphs`]).
    graphed: Option<GraphedSteps>,
    /// Held while the run is open (by the writer): one writer per run folder.
    _lock: Option<RunLock>,
}

impl Trainer {
    /// Starts a run in `dir`, or resumes the one there (from its checkpoint, or from step 0
    /// when only its `config.json` was written), holding the folder's lock. A run is resumed
    /// only with the same settings; only `train.steps` (to extend a run, never below the step
    /// it is at) and the intervals of checkpoints, log lines and sample grids may change.
    pub fn open(dir: &Path, config: RunConfig, device: Device) -> Result<Self> {
        let lock = RunLock::acquire(dir)?;
        let data = Dataset::open(&config.data)?;
        Self::open_with_data(lock, config, data, device)
    }

    /// [`Trainer::open`] in the folder of `lock`, with the data already opened from
    /// `config.data`.
    pub fn open_with_data(lock: RunLock, config: RunConfig, data: Dataset, device: Device) -> Result<Self> {
        let dir = lock.dir().to_path_buf();
        Self::open_as(&dir, Some(lock), config, data, device)
    }

    /// [`Trainer::open_with_data`] for one rank of a data-parallel job, every rank given the
    /// same settings: rank 0, holding the folder's `lock`, opens or resumes the run in `dir` as
    /// a single process would, and sends its settings (checked against each rank's own) and its
    /// state (weights, EMA, Adam's moments, step) to the others, which hold no lock and never
    /// touch `dir`. Each rank then trains on its [`Shard`] of every batch.
    pub fn open_in_job(
        dir: &Path,
        lock: Option<RunLock>,
        config: RunConfig,
        data: Dataset,
        device: Device,
        group: Arc<ProcessGroup>,
    ) -> Result<Self> {
        let shard = Shard::of(config.train.batch_size, group.rank(), group.world_size())?;
        if lock.is_some() != (group.rank() == 0) {
            return Err(Error::Config("rank 0 of a job, and it alone, holds the run folder's lock".into()));
        }
        let opened = Self::open_as(dir, lock, config, data, device);
        // Every rank learns whether all could open the run before anyone waits for rank 0's state.
        let failures = Tensor::from_slice(&[opened.is_err() as i64]);
        group.all_reduce_sum(&failures)?;
        let mut trainer = match (opened, failures.int64_value(&[0])) {
            (Err(e), _) => return Err(e),
            (Ok(_), n) if n > 0 => {
                return Err(Error::Distributed {
                    rank: group.rank(),
                    what: format!("{n} other rank(s) could not open the run (their own messages say why)"),
                })
            }
            (Ok(trainer), _) => trainer,
        };
        let mine = serde_json::to_vec(&trainer.config).map_err(|e| Error::Config(e.to_string()))?;
        let sent = group.broadcast_bytes((group.rank() == 0).then_some(mine.as_slice()))?;
        if sent != mine {
            return Err(Error::Distributed {
                rank: group.rank(),
                what: "this rank's settings differ from rank 0's: give every rank the same command and config".into(),
            });
        }
        let untrained = |vs: &VarStore| {
            let mut vars: Vec<_> = vs.variables().into_iter().filter(|(_, v)| !v.requires_grad()).collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            vars
        };
        tch::no_grad(|| -> Result<()> {
            let state = [trainer.params.values(), trainer.ema.values(), &trainer.adam.m, &trainer.adam.v];
            for tensor in state.into_iter().chain(untrained(&trainer.vs).iter().map(|(_, v)| v)) {
                group.broadcast(tensor, 0)?;
            }
            for (_, var) in untrained(&trainer.ema_vs) {
                group.broadcast(&var, 0)?;
            }
            Ok(())
        })?;
        let clock = Tensor::from_slice(&[trainer.step as f64, trainer.seconds]);
        group.broadcast(&clock, 0)?;
        trainer.step = clock.double_value(&[0]) as u64;
        trainer.seconds = clock.double_value(&[1]);
        trainer.group = Some(group);
        trainer.shard = shard;
        Ok(trainer)
    }

    /// Opens the run; the holder of the folder's `lock` reads and writes `dir` (the checkpoint,
    /// config.json), any other rank of a job builds the model alone and is sent the rest.
    fn open_as(dir: &Path, lock: Option<RunLock>, config: RunConfig, data: Dataset, device: Device) -> Result<Self> {
        let writer = lock.is_some();
        config.train.validate()?;
        if data.shape() != config.model.data_shape {
            return Err(Error::Config(format!(
                "model.data_shape {:?} does not match the data's shape {:?}",
                config.model.data_shape,
                data.shape()
            )));
        }
        let num_labels = config.model.backbone.num_labels();
        match data.num_labels() {
            _ if num_labels == 0 => {}
            None => {
                return Err(Error::Config(format!(
                    "a conditional model needs labelled data; '{}' has none",
                    config.data
                )))
            }
            Some(n) if n > num_labels => {
                return Err(Error::Config(format!("the data has {n} labels, the model was built for {num_labels}")))
            }
            Some(_) => {}
        }
        if config.train.hflip && config.model.data_shape.len() != 3 {
            return Err(Error::Config("train.hflip needs image data [C, H, W]".into()));
        }
        if config.train.dequantize && !data.is_8bit() {
            return Err(Error::Config(format!(
                "train.dequantize needs 8-bit images (x = k/127.5 − 1); '{}' is not",
                config.data
            )));
        }
        let (config_path, weights_path) = checkpoint::paths(dir);
        let saved = if writer { saved_run(dir)? } else { None };
        if let Some(saved) = &saved {
            let changes = config.changes_from(saved);
            if !changes.is_empty() {
                return Err(Error::Config(format!(
                    "{} holds a run with other settings ({}); resume it with its own (`cdm train --out {0}` alone), \
                     start it again with --restart, or choose another --out",
                    dir.display(),
                    changes.join("; ")
                )));
            }
        }
        let checkpointed = writer && weights_path.exists();
        if checkpointed && saved.is_none() {
            return Err(Error::checkpoint(
                &weights_path,
                format!(
                    "has no {} beside it to say what it was trained with; restore it, or --restart",
                    checkpoint::CONFIG_FILE
                ),
            ));
        }
        let [(mut vs, model), (mut ema_vs, ema_model)] = build_seeded_pair(&config, device, config.train.seed)?;
        match (checkpointed, &config.train.init_from) {
            // A resumed run restores its weights and base from the checkpoint below, and the
            // ranks of a job that do not write are sent theirs.
            (true, _) => {}
            _ if !writer => {}
            (false, Some(init)) => init_weights(&mut vs, &config, init)?,
            (false, None) => {
                if let Some(base) = model.base() {
                    base.fit(&data.eval_points(BASE_FIT_POINTS, config.train.seed), data.labels())?;
                }
            }
        }
        if config.train.cdl.is_some() && config.model.kind != ModelKind::Ddm {
            return Err(Error::Config("the contrastive diffusion loss is for a DDM (--model ddm)".into()));
        }
        ema_vs.copy(&vs)?;
        let params = FlatVars::new(trained_vars(&vs))?.track_grads();
        let ema = FlatVars::new(trained_vars(&ema_vs))?;
        // The EMA weights are only ever evaluated: without requires_grad, the sample grids'
        // forward passes record nothing for weight gradients.
        for (_, var) in trained_vars(&ema_vs) {
            let _ = var.set_requires_grad(false);
        }
        let adam = Adam::new(&params);
        let config_batch = config.train.batch_size;
        let mut trainer = Trainer {
            config,
            dir: dir.to_path_buf(),
            data,
            device,
            vs,
            model,
            ema_vs,
            ema_model,
            params,
            ema,
            adam,
            step: 0,
            seconds: 0.0,
            fid: None,
            group: None,
            shard: Shard::whole(config_batch),
            graphed: None,
            _lock: lock,
        };
        if checkpointed {
            trainer.restore(&weights_path)?;
        }
        let (steps, step) = (trainer.config.train.steps, trainer.step);
        if steps < step {
            return Err(Error::Config(format!(
                "train.steps {steps} is below step {step}, where the run in {} stands; pass --steps above {step} \
                 to train it further, or --restart to start it again",
                dir.display()
            )));
        }
        if writer {
            checkpoint::write_json(&config_path, &trainer.config)?;
        }
        Ok(trainer)
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let file = TensorFile::load(path)?;
        file.load_vars("model", &mut self.vs, path)?;
        file.load_vars("ema", &mut self.ema_vs, path)?;
        tch::no_grad(|| -> Result<()> {
            for (i, name) in self.params.names().iter().enumerate() {
                self.params.slice(&self.adam.m, i).f_copy_(file.get(&format!("adam_m/{name}"), path)?)?;
                self.params.slice(&self.adam.v, i).f_copy_(file.get(&format!("adam_v/{name}"), path)?)?;
            }
            Ok(())
        })?;
        self.step = step_of(&file, path)?;
        // Checkpoints from before the clock was kept resume at zero seconds.
        self.seconds = file.metadata.get("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
        Ok(())
    }

    /// What the training batches are made of: batch size, augmentation, label dropout for a
    /// conditional model, precision and device (see [`crate::data::loader`]).
    pub fn batch_options(&self) -> BatchOptions {
        let cfg = &self.config.train;
        let num_labels = self.config.model.backbone.num_labels() as i64;
        BatchOptions {
            shard: self.shard,
            seed: cfg.seed,
            hflip: cfg.hflip,
            dequantize: cfg.dequantize,
            null_label: (num_labels > 0).then_some(num_labels),
            label_dropout: cfg.label_dropout,
            kind: cfg.precision.kind(),
            device: self.device,
        }
    }

    /// Writes `samples/step_N.png`: 16 DDIM-50 samples from the EMA weights (a conditional
    /// model cycles through its classes), from a fixed seed so grids compare across steps.
    fn sample_grid(&self) -> Result<()> {
        let dir = self.dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let opts = SampleOptions::ddim(50.min(self.ema_model.schedule().timesteps()));
        let batches = crate::batches::Batches::new(16, (self.config.train.precision.kind(), self.device));
        let samples = draw(&self.ema_model, 16, &opts, &batches)?;
        image_grid(&dir.join(format!("step_{}.png", self.step)), &samples.x, 4)
    }

    /// FID of the EMA weights' samples (see [`FidMonitor`]), loading the monitor on first use.
    fn measure_fid(&mut self) -> Result<f64> {
        let cfg = &self.config.train;
        let monitor = match &mut self.fid {
            Some(monitor) => monitor,
            empty => empty.insert(FidMonitor::new(&self.config.data, cfg.fid_samples, self.device)?),
        };
        monitor.measure(&self.ema_model, (cfg.precision.kind(), self.device))
    }

    /// Replays the loss and backward pass of every step after the first few from a CUDA graph
    /// ([`graphed`]), on a CUDA device; anywhere else, or with the contrastive diffusion loss
    /// (whose draws a graph cannot take), steps run as they are. The same draws, so the same
    /// training, up to the order of floating-point sums in some kernels.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if on && !self.device.is_cuda() {
            tracing::info!("training steps run without CUDA graphs: {:?} is not a CUDA device", self.device);
        } else if on && self.config.train.cdl.is_some() {
            tracing::warn!(
                "training steps run without CUDA graphs: the contrastive diffusion loss draws inside the step"
            );
        }
        self.graphed = (on && self.config.train.cdl.is_none()).then(|| GraphedSteps::new(self.device));
    }

    /// Whether training steps are being replayed from a CUDA graph.
    pub fn steps_graphed(&self) -> bool {
        self.graphed.as_ref().is_some_and(GraphedSteps::is_captured)
    }

    /// The data-parallel job this trainer is a rank of.
    pub fn group(&self) -> Option<&ProcessGroup> {
        self.group.as_deref()
    }

    /// Whether this process writes the run's files: a single process, or rank 0 of a job.
    pub fn is_writer(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Steps already taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model with its raw (non-EMA) weights.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Writes the checkpoint for the current step.
    pub fn save(&self) -> Result<()> {
        let mut file = TensorFile::default();
        file.insert_vars("model", &self.vs);
        file.insert_vars("ema", &self.ema_vs);
        for (i, name) in self.params.names().iter().enumerate() {
            file.tensors.insert(format!("adam_m/{name}"), self.params.slice(&self.adam.m, i).to_device(Device::Cpu));
            file.tensors.insert(format!("adam_v/{name}"), self.params.slice(&self.adam.v, i).to_device(Device::Cpu));
        }
        file.metadata.insert("step".into(), self.step.to_string());
        file.metadata.insert("seconds".into(), self.seconds.to_string());
        file.save(&checkpoint::paths(&self.dir).1)
    }

    /// Trains up to `train.steps`, calling `on_step` after each step that reads its numbers
    /// back (see [`Trainer::run_until`]). A non-finite loss or gradient stops training with an
    /// error and leaves the last checkpoint in place; a signal (see [`crate::signals`]) stops
    /// it after the current step, with a checkpoint of that step.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepReport)) -> Result<()> {
        self.run_until(self.config.train.steps, on_step)
    }

    /// Trains up to step `stop` (at most `train.steps`) and stops as an interrupted run would:
    /// only the periodic checkpoints are written before the last step.
    ///
    /// The step's numbers are read from the device only on the steps that log, checkpoint,
    /// sample, or end this call, and `on_step` is called after those alone. A non-finite loss
    /// or gradient norm is noted on the device when it occurs and reported at the next such
    /// step, before anything is written: the error names the step it occurred at, and the
    /// checkpoint on disk is the last one written before it.
    pub fn run_until(&mut self, stop: u64, on_step: &mut dyn FnMut(&StepReport)) -> Result<()> {
        let cfg = self.config.train.clone();
        let stop = stop.min(cfg.steps);
        let log_path = self.dir.join(checkpoint::LOG_FILE);
        let writer = self.is_writer();
        let mut log = if writer { Some(LogFile::open(&log_path, self.step)?) } else { None };
        let mut batches = Batches::new(&self.data, self.batch_options(), self.step..stop);
        let mut first_bad = FirstNonFinite::new(self.device);
        // Training time runs from here to each read of the device, which waits for the queue;
        // sample grids and FIDs are not counted.
        let mut clock = std::time::Instant::now();
        let images = self.config.model.data_shape.len() == 3;
        let weights = LossWeights {
            ce: cfg.ce_weight,
            mse: cfg.mse_weight,
            min_snr: cfg.min_snr,
            cdl: cfg.cdl,
            low_levels: cfg.low_levels,
            level_strides: cfg.level_strides.clone(),
        };
        while self.step < stop {
            let k = self.step;
            let Batch { x0, labels } = batches.next(&self.data)?;
            let mut rng = Rng::stream(cfg.seed, k);
            let loss = match &mut self.graphed {
                Some(steps) => {
                    let draw = self.model.draw_loss(&x0, &weights, self.shard, &mut rng)?;
                    let inputs = StepInputs { x0: &x0, labels: labels.as_ref(), draw: &draw, weights: &weights };
                    steps.step(&self.model, &mut self.params, &inputs)?
                }
                None => {
                    let loss = self.model.loss(&x0, labels.as_ref(), &weights, self.shard, &mut rng)?;
                    self.params.zero_grads();
                    loss.total.backward();
                    loss
                }
            };
            // Each rank's loss is its share of the batch's: the sum of their gradients is the
            // batch's gradient, the same on every rank, and so is everything computed from it.
            if let Some(group) = &self.group {
                group.all_reduce_sum(self.params.grads()?)?;
            }
            // Nothing in an ordinary step reads back from the device (on a GPU each read waits
            // for the queue to drain): the clip scale stays a device scalar, a non-finite loss
            // or gradient is noted on the device, and the numbers are read on the steps that
            // report, log, checkpoint or sample.
            let norm = grad_norm(&self.params)?;
            let scale = cfg.grad_clip.map(|c| (norm.reciprocal() * c).clamp_max(1.0));
            first_bad.observe(k + 1, &loss.total, &norm);
            let lr = cfg.lr_at(k);
            self.adam.update(&self.params, lr, k + 1, scale.as_ref())?;
            ema_update(&self.ema, &self.params, cfg.ema_decay.min((1.0 + k as f64) / (10.0 + k as f64)));
            self.step += 1;
            // A signal ends the run here, at a checkpoint, as if this were its last step.
            // The ranks of a job agree, so that all stop after the same step.
            let stopping = match &self.group {
                Some(group) => group.any(stop_requested())?,
                None => stop_requested(),
            };
            let fid_due = images && cfg.fid_every > 0 && self.step.is_multiple_of(cfg.fid_every);
            let logged = self.step.is_multiple_of(cfg.log_every) || self.step == cfg.steps || fid_due;
            let saved = self.step.is_multiple_of(cfg.checkpoint_every) || self.step == cfg.steps || stopping;
            let sampled = images && cfg.sample_every > 0 && self.step.is_multiple_of(cfg.sample_every);
            if !(logged || saved || sampled || self.step == stop) {
                continue;
            }
            // Every number the step reports or checks, read in one host sync.
            let scalar = |t: &Tensor| t.detach().to_kind(Kind::Double).reshape([1]);
            let mut read = vec![first_bad.0.shallow_clone(), norm.reshape([1]), scalar(&loss.total), scalar(&loss.mse)];
            read.extend(loss.ce.iter().map(scalar));
            read.extend(loss.cdl.iter().map(|c| scalar(&c.loss)));
            let mut values = Vec::<f64>::try_from(Tensor::cat(&read, 0))?;
            first_bad.check(&values[..3], self.step)?;
            if let Some(group) = &self.group {
                // The loss terms (after the gradient norm) are each rank's share: add them up.
                let sums = Tensor::from_slice(&values[4..]);
                group.all_reduce_sum(&sums)?;
                values.splice(4.., Vec::<f64>::try_from(&sums)?);
            }
            let (grad_norm, total, mse) = (values[3], values[4], values[5]);
            let mut rest = values[6..].iter().copied();
            let ce = loss.ce.as_ref().and_then(|_| rest.next());
            let cdl = loss.cdl.as_ref().and_then(|_| rest.next());
            self.seconds += clock.elapsed().as_secs_f64();
            clock = std::time::Instant::now();
            let fid = if fid_due && writer { Some(self.measure_fid()?) } else { None };
            let report = StepReport {
                step: self.step,
                loss: total,
                ce,
                mse,
                lr,
                grad_norm,
                cdl,
                cdl_accuracy: loss.cdl.as_ref().map(|c| c.accuracy),
                seconds: self.seconds,
                fid,
            };
            if let (true, Some(log)) = (logged, &mut log) {
                log.append(&report)?;
            }
            if let (true, Some(log)) = (saved, &mut log) {
                if let Some(name) = self.params.first_non_finite() {
                    return Err(Error::NonFinite {
                        step: self.step,
                        what: format!("weight '{name}' is not finite after the update"),
                    });
                }
                self.save()?;
                log.sync()?;
            }
            if sampled && writer {
                self.sample_grid()?;
            }
            if sampled || fid_due {
                clock = std::time::Instant::now();
            }
            on_step(&report);
            if stopping {
                break;
            }
        }
        Ok(())
    }
}
