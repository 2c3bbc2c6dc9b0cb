//! Second-order multistep DPM-Solver (Lu et al., "DPM-Solver", 2022, arXiv:2206.00927) in its
//! noise form, and DPM-Solver++(2M) (Lu et al., "DPM-Solver++", 2022, arXiv:2211.01095,
//! Algorithm 2) in its data form. Both step in λ = log(√ᾱ/√(1-ᾱ)), take a first-order (DDIM)
//! step first, and a first-order step onto ᾱ = 1, where λ is infinite.
use tch::Tensor;

use super::Step;
use crate::predictor::NoisePredictor;
use crate::schedule::{levels_like, Schedule};
use crate::Result;

/// λ_t = log(α_t/σ_t), the half log-SNR.
fn lambda(schedule: &Schedule, t: usize) -> f64 {
    let abar = schedule.alpha_bar(t);
    0.5 * (abar / (1.0 - abar)).ln()
}

/// What each solver keeps from one step to the next: the model output in its own
/// parametrisation (ε̂ or x̂0) and the step size h in λ that led to it.
struct History {
    output: Tensor,
    h: f64,
}

/// One solver step: `(x, t, s, h = λ_s − λ_t, ε̂, x̂0, history)` → (x_s, the output to remember).
type Update<'a> = &'a dyn Fn(&Tensor, usize, usize, f64, &Tensor, &Tensor, Option<&History>) -> (Tensor, Tensor);

/// Runs both solvers through their `update`.
fn multistep(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
    update: Update,
) -> Result<Tensor> {
    let mut x = x_t;
    let mut history: Option<History> = None;
    for (i, pair) in levels.windows(2).enumerate() {
        let (t, s) = (pair[0], pair[1]);
        let level = levels_like(t, &x);
        let eps = model.eps(&x, &level)?;
        let x0 = schedule.x0_from_eps(&x, &eps, &level);
        let h = lambda(schedule, s) - lambda(schedule, t);
        let (next, output) = if schedule.alpha_bar(s) >= 1.0 {
            (x0.shallow_clone(), x0.shallow_clone())
        } else {
            update(&x, t, s, h, &eps, &x0, history.as_ref())
        };
        x = next;
        history = Some(History { output, h });
        on_step(&Step { i, t, x_t: &x, x0: &x0 });
    }
    Ok(x)
}

/// DPM-Solver-2M, noise form: x_s = (α_s/α_t) x − σ_s (e^h − 1) ε_t − σ_s (e^h − h − 1)(ε_t − ε_prev)/h_prev.
pub fn dpm_solver_2m(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let update = |x: &Tensor, t: usize, s: usize, h: f64, eps: &Tensor, _x0: &Tensor, prev: Option<&History>| {
        let (a_t, a_s) = (schedule.alpha_bar(t).sqrt(), schedule.alpha_bar(s).sqrt());
        let sigma_s = (1.0 - schedule.alpha_bar(s)).sqrt();
        let mut next = x * (a_s / a_t) - eps * (sigma_s * h.exp_m1());
        if let Some(prev) = prev {
            next -= (eps - &prev.output) * (sigma_s * (h.exp_m1() - h) / prev.h);
        }
        (next, eps.shallow_clone())
    };
    multistep(model, schedule, x_t, levels, on_step, &update)
}

/// DPM-Solver++(2M), data form: x_s = (σ_s/σ_t) x − α_s (e^{−h} − 1) D with
/// D = (1 + 1/(2r)) x̂0_t − x̂0_prev/(2r), r = h_prev/h.
pub fn dpm_solver_pp_2m(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: Tensor,
    levels: &[usize],
    on_step: &mut dyn FnMut(&Step),
) -> Result<Tensor> {
    let update = |x: &Tensor, t: usize, s: usize, h: f64, _eps: &Tensor, x0: &Tensor, prev: Option<&History>| {
        let (sigma_t, sigma_s) = ((1.0 - schedule.alpha_bar(t)).sqrt(), (1.0 - schedule.alpha_bar(s)).sqrt());
        let a_s = schedule.alpha_bar(s).sqrt();
        let d = match prev {
            Some(prev) => {
                let r = prev.h / h;
                x0 * (1.0 + 0.5 / r) - &prev.output * (0.5 / r)
            }
            None => x0.shallow_clone(),
        };
        (x * (sigma_s / sigma_t) - d * (a_s * (-h).exp_m1()), x0.shallow_clone())
    };
    multistep(model, schedule, x_t, levels, on_step, &update)
}
