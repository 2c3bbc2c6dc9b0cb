//! The sequential samplers: one network evaluation per step, each step taken by
//! [`StepTable::apply`] as a window of one.
use tch::Tensor;

use super::steps::StepTable;
use super::{Noise, SamplerKind, Step};
use crate::predictor::NoisePredictor;
use crate::schedule::{levels_like, Schedule};
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
    schedule: &Schedule,
    table: &StepTable,
    x_t: Tensor,
    noise: &mut Noise,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let mut x = x_t;
    let mut memory: Option<Tensor> = None;
    for (i, &t) in table.levels()[..table.num_steps()].iter().enumerate() {
        let level = levels_like(t, &x);
        let eps = model.eps(&x, &level)?;
        let x0 = schedule.x0_from_eps(&x, &eps, &level);
        let z = table.draws_noise(i).then(|| noise.normal(&x.size()[1..], x.kind(), x.device()).unsqueeze(0));
        let next = table.apply(i, &x.unsqueeze(0), &eps.unsqueeze(0), memory.as_ref(), z.as_ref()).squeeze_dim(0);
        check_finite(&next, i, t)?;
        memory = table.memory(&eps, &x0).map(|m| m.unsqueeze(0));
        x = next;
        on_step(&Step { i, t, x_t: &x, x0: &x0 });
    }
    Ok(x)
}

/// A sampler whose state overflows would otherwise return NaN images silently.
pub(crate) fn check_finite(x: &Tensor, step: usize, level: usize) -> Result<()> {
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
    sequential(model, schedule, &table, x_t, noise, on_step)
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
    sequential(model, schedule, &table, x_t, noise, on_step)
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
    sequential(model, schedule, &table, x_t, &mut Noise::new(0, 0, 0), on_step)
}
