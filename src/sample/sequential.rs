//! The sequential samplers: one network evaluation per step, each step taken by the table's
//! [`super::steps::Columns::apply`] as a window of one.
use tch::Tensor;

use super::steps::StepTable;
use super::{Noise, SamplerKind, Step};
use crate::inference_mode::InferenceMode;
use crate::predictor::NoisePredictor;
use crate::schedule::Schedule;
use crate::{Error, Result};

/// DDIM settings.
#[derive(Clone, Copy, Debug)]
pub struct DdimOptions {
    /// η: 0 is deterministic; 1 has DDPM's posterior variance.
    pub eta: f64,
}

impl Default for DdimOptions {
    fn default() -> Self {
        DdimOptions { eta: 0.0 }
    }
}

/// Runs the steps of `table` from `x_t` ([n, ..], at `table.levels()[0]`) down to level 0.
/// Fails with [`Error::NonFiniteSample`] at the first step whose state is not finite.
pub fn sequential(
    model: &dyn NoisePredictor,
    table: &StepTable,
    x_t: Tensor,
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let columns = table.columns(&x_t);
    // One state buffer updated in place, outside inference mode, so that the network (a
    // classifier's ε̂ needs autograd) never sees an inference tensor.
    let mut x = x_t.unsqueeze(0).copy();
    let mut memory: Option<Tensor> = None;
    for (i, &t) in table.levels()[..table.num_steps()].iter().enumerate() {
        let eps = model.eps(&x.squeeze_dim(0), &columns.levels(i, 1))?.unsqueeze(0);
        let arithmetic = InferenceMode::enter();
        let x0 = columns.x0(i, &x, &eps);
        let z = table.draws_noise(i).then(|| noise.steps(&[table.noise_std(i)], &x.size()[2..], x.kind(), x.device()));
        let next = columns.apply(i, &x, &eps, memory.as_ref(), z.as_ref());
        check_finite(&next, i, t)?;
        memory = table.memory(&eps, &x0);
        x.copy_(&next);
        drop(arithmetic);
        on_step(&Step::new(i, t, &x, &x0, 0));
    }
    Ok(x.squeeze_dim(0))
}

/// A sampler whose state overflows would otherwise return NaN images silently.
fn check_finite(x: &Tensor, step: usize, level: usize) -> Result<()> {
    match x.isfinite().all().int64_value(&[]) {
        1 => Ok(()),
        _ => Err(Error::NonFiniteSample { step, level }),
    }
}

/// Ancestral sampling (DDPM) from `x_t` at `levels[0]` down the decreasing grid `levels`.
pub fn ddpm(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let table = StepTable::new(SamplerKind::Ddpm, 0.0, schedule, levels)?;
    sequential(model, &table, x_t, noise, on_step)
}

/// DDIM from `x_t` at `levels[0]` down the decreasing grid `levels`.
pub fn ddim(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    opts: &DdimOptions,
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let table = StepTable::new(SamplerKind::Ddim, opts.eta, schedule, levels)?;
    sequential(model, &table, x_t, noise, on_step)
}

/// DPM-Solver-2M (noise form) down the decreasing grid `levels`; deterministic.
pub fn dpm_solver_2m(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    deterministic(SamplerKind::Dpm2, model, schedule, x_t, levels, on_step)
}

/// DPM-Solver++(2M) (data form) down the decreasing grid `levels`; deterministic.
pub fn dpm_solver_pp_2m(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    deterministic(SamplerKind::Dpmpp2m, model, schedule, x_t, levels, on_step)
}

/// A sampler that draws no noise, run sequentially.
fn deterministic(
    sampler: SamplerKind,
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let table = StepTable::new(sampler, 0.0, schedule, levels)?;
    sequential(model, &table, x_t, &mut Noise::new(0, 0, 0), on_step)
}
