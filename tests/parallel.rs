//! Parallel sampling (Picard iteration, ParaDiGMS, and its Anderson acceleration) against the
//! sequential samplers: with the same pre-drawn noise, a window of one is the sequential
//! sampler, any window converges to it, and on Gaussian data the converged DDIM is the exact
//! linear map. Predictors: the optimal classifier of Gaussian data (ε̂ by input gradient),
//! closed-form mixture denoisers, and small untrained conditional CDMs and DDMs.
mod common;

use cdm::batches::Batches;
use cdm::classifier::Classifier;
use cdm::model::{Model, ModelKind};
use cdm::predictor::{Conditioned, NoisePredictor};
use cdm::sample::{
    draw, parallel, sequential, Noise, ParallelInit, ParallelOptions, ParallelSolver, SampleOptions, SamplerKind,
    StepTable,
};
use cdm::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use common::{conditional_mlp, gaussian_backbone, gaussian_ddim_gain, max_abs_diff};
use tch::{nn, Device, Kind, Tensor};

const S: f64 = 0.5;

fn schedule(t: usize) -> Schedule {
    Schedule::new(ScheduleConfig::new(ScheduleKind::Linear, t)).unwrap()
}

/// The exact ε̂ of data ½N(−μ, s²) + ½N(μ, s²) per coordinate (a nonlinear denoiser).
fn mixture_eps(schedule: &Schedule, mu: f64, s: f64) -> impl Fn(&Tensor, &Tensor) -> cdm::Result<Tensor> + '_ {
    move |x: &Tensor, t: &Tensor| {
        let (a, sigma) = schedule.coefficients(t, x);
        let var = &a * &a * (s * s) + &sigma * &sigma;
        // Posterior weight of the +μ component, then E[ε | x] = (x − a·E[x0 | x]) / σ.
        let logit = &a * (2.0 * mu) * x / &var;
        let w = logit.sigmoid() * 2.0 - 1.0;
        let mean_component = &w * (&a * mu);
        let x0 = (&w * mu) + (x - &mean_component) * (&a * (s * s)) / &var;
        Ok((x - &a * x0) / sigma)
    }
}

fn run_sequential(model: &dyn NoisePredictor, table: &StepTable, x_t: &Tensor, seed: u64) -> Tensor {
    let n = x_t.size()[0] as usize;
    sequential(model, table, x_t.shallow_clone(), &mut Noise::new(seed, 0, n), &mut |_| {}).unwrap()
}

fn run_parallel(
    model: &dyn NoisePredictor,
    table: &StepTable,
    x_t: &Tensor,
    seed: u64,
    opts: ParallelOptions,
) -> (Tensor, cdm::sample::ParallelStats) {
    let n = x_t.size()[0] as usize;
    let run = parallel(model, table, x_t.shallow_clone(), &mut Noise::new(seed, 0, n), &opts, &mut |_| {});
    let run = run.unwrap();
    (run.x, run.stats)
}

fn picard(window: usize, tol: f64) -> ParallelOptions {
    ParallelOptions { window, tol, ..ParallelOptions::default() }
}

#[test]
fn a_window_of_one_is_the_sequential_sampler() {
    let schedule = schedule(200);
    let gaussian =
        Classifier::from_backbone(Box::new(gaussian_backbone(schedule.alpha_bars(), S, 2)), schedule.clone(), vec![2]);
    let cdm = Conditioned { model: &gaussian, labels: None };
    let ddm = mixture_eps(&schedule, 1.0, 0.3);
    let x_t = Noise::new(1, 0, 16).normal(&[2], Kind::Double, Device::Cpu);
    let levels = schedule.sampling_levels(50).unwrap();
    let models: [(&str, &dyn NoisePredictor); 2] = [("cdm", &cdm), ("ddm", &ddm)];
    for (name, model) in models {
        for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::Dpm2, SamplerKind::Dpmpp2m] {
            let table = StepTable::new(sampler, 0.0, &schedule, &levels).unwrap();
            let expected = run_sequential(model, &table, &x_t, 7);
            let (got, stats) = run_parallel(model, &table, &x_t, 7, picard(1, 0.1));
            let gap = max_abs_diff(&got, &expected);
            assert!(gap < 1e-12, "{name} {sampler:?}: window 1 is {gap} off the sequential sampler");
            assert_eq!((stats.iterations, stats.evaluations), (50, 50), "{name} {sampler:?}");
        }
    }
}

#[test]
fn any_window_converges_to_the_sequential_trajectory_at_zero_tolerance() {
    let schedule = schedule(100);
    let model = mixture_eps(&schedule, 1.0, 0.3);
    let x_t = Noise::new(2, 0, 8).normal(&[3], Kind::Double, Device::Cpu);
    let levels = schedule.sampling_levels(40).unwrap();
    for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::Dpmpp2m] {
        let table = StepTable::new(sampler, 0.0, &schedule, &levels).unwrap();
        let expected = run_sequential(&model, &table, &x_t, 3);
        for window in [4, 16, 40, 64] {
            for solver in [ParallelSolver::Picard, ParallelSolver::Anderson, ParallelSolver::Newton] {
                for init in [ParallelInit::Guess, ParallelInit::Copy] {
                    let opts = ParallelOptions { solver, init, ..picard(window, 0.0) };
                    let (got, stats) = run_parallel(&model, &table, &x_t, 3, opts);
                    let gap = max_abs_diff(&got, &expected);
                    let case = format!("{sampler:?} window {window} {solver:?} {init:?}");
                    assert!(gap < 1e-9, "{case}: {gap} off the sequential trajectory");
                    assert!(stats.iterations <= 40, "{case}: {} iterations", stats.iterations);
                }
            }
        }
    }
}

#[test]
fn converged_parallel_ddim_is_the_exact_linear_map_on_gaussian_data() {
    let schedule = schedule(1000);
    let gaussian =
        Classifier::from_backbone(Box::new(gaussian_backbone(schedule.alpha_bars(), S, 2)), schedule.clone(), vec![2]);
    let model = Conditioned { model: &gaussian, labels: None };
    let levels = schedule.sampling_levels(100).unwrap();
    let table = StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &levels).unwrap();
    let x_t = Noise::new(4, 0, 64).normal(&[2], Kind::Double, Device::Cpu);
    let (x0, stats) = run_parallel(&model, &table, &x_t, 0, picard(32, 1e-8));
    // Every DDIM step is linear for Gaussian data (tests/samplers.rs derives the gain).
    let gain = gaussian_ddim_gain(|t| schedule.alpha_bar(t), &levels, S);
    let gap = max_abs_diff(&x0, &(&x_t * gain));
    assert!(gap < 1e-7, "off the exact DDIM map by {gap}");
    assert!(stats.iterations < 100, "{} iterations for 100 steps", stats.iterations);
}

#[test]
fn anderson_reaches_picards_fixed_point_in_fewer_iterations() {
    // A pinned case: DDPM-200 on a two-mode mixture, the whole trajectory in one window, τ = 1e-3
    // (18 Picard iterations against 16). With a sliding window each state stays too few
    // iterations for a history to pay, and Picard from a good start is as fast (docs §8.1).
    let schedule = schedule(1000);
    let model = mixture_eps(&schedule, 1.0, 0.2);
    let x_t = Noise::new(5, 0, 32).normal(&[2], Kind::Double, Device::Cpu);
    let levels = schedule.sampling_levels(200).unwrap();
    let table = StepTable::new(SamplerKind::Ddpm, 0.0, &schedule, &levels).unwrap();
    let expected = run_sequential(&model, &table, &x_t, 9);
    let (plain, plain_stats) = run_parallel(&model, &table, &x_t, 9, picard(200, 1e-3));
    let opts = ParallelOptions { solver: ParallelSolver::Anderson, ..picard(200, 1e-3) };
    let (fast, fast_stats) = run_parallel(&model, &table, &x_t, 9, opts);
    for (name, x) in [("picard", &plain), ("anderson", &fast)] {
        let gap = max_abs_diff(x, &expected);
        assert!(gap < 1e-3, "{name}: {gap} off the sequential samples");
    }
    assert!(
        fast_stats.iterations < plain_stats.iterations,
        "anderson {} iterations, picard {}",
        fast_stats.iterations,
        plain_stats.iterations
    );
}

/// A small untrained conditional model with 3 classes, in f64.
fn conditional_model(kind: ModelKind) -> (nn::VarStore, Model) {
    tch::manual_seed(0);
    let (mut vs, model) = conditional_mlp(kind, 50);
    vs.set_kind(Kind::Double);
    (vs, model)
}

#[test]
fn labels_guidance_and_clipping_inside_a_window_match_the_sequential_samples() {
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (_vs, model) = conditional_model(kind);
        for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim] {
            let sequential = SampleOptions { sampler, guidance: 1.5, clip_x0: Some(1.0), ..SampleOptions::ddim(20) };
            let windowed = SampleOptions { parallel: Some(picard(8, 0.0)), ..sequential.clone() };
            let batches = Batches::new(6, (Kind::Double, Device::Cpu));
            let a = draw(&model, 6, &sequential, &batches).unwrap();
            let b = draw(&model, 6, &windowed, &batches).unwrap();
            assert_eq!(a.labels, Some(vec![0, 1, 2, 0, 1, 2]));
            let gap = max_abs_diff(&a.x, &b.x);
            assert!(gap < 1e-9, "{kind:?} {sampler:?}: parallel samples {gap} off the sequential ones");
            assert!(b.stats.largest_batch == 8 * 6 && b.stats.iterations <= 20, "{:?}", b.stats);
        }
    }
}

#[test]
fn a_trace_holds_the_samples_of_every_iteration_budget() {
    // DDPM-30 on a two-mode mixture, every step in one window from copies of x_T: one entry per
    // iteration, the last the converged sample; over batches, the longest batch's count, a
    // batch that converged sooner holding its samples.
    let schedule = schedule(100);
    let model = mixture_eps(&schedule, 1.0, 0.3);
    let table = StepTable::new(SamplerKind::Ddpm, 0.0, &schedule, &schedule.sampling_levels(30).unwrap()).unwrap();
    let x_t = Noise::new(5, 0, 8).normal(&[2], Kind::Double, Device::Cpu);
    let expected = run_sequential(&model, &table, &x_t, 4);
    let opts = ParallelOptions { init: ParallelInit::Copy, trace: true, ..picard(30, 1e-6) };
    let run = parallel(&model, &table, x_t.shallow_clone(), &mut Noise::new(4, 0, 8), &opts, &mut |_| {});
    let run = run.unwrap();
    assert_eq!(run.trace.len(), run.stats.iterations);
    assert!(run.stats.iterations < 30, "{} iterations", run.stats.iterations);
    assert!(max_abs_diff(&run.x, &expected) < 1e-5);
    assert_eq!(max_abs_diff(run.trace.last().unwrap(), &run.x), 0.0);
    // The first iterate is far from the samples: the trace is not the final state repeated.
    assert!(max_abs_diff(&run.trace[0], &expected) > 0.1);

    let (_vs, model) = conditional_model(ModelKind::Ddm);
    let window = ParallelOptions { init: ParallelInit::Copy, trace: true, ..picard(20, 0.1) };
    let opts = SampleOptions { sampler: SamplerKind::Ddpm, parallel: Some(window), ..SampleOptions::ddim(20) };
    let samples = draw(&model, 6, &opts, &Batches::new(4, (Kind::Double, Device::Cpu))).unwrap();
    assert!(!samples.trace.is_empty() && samples.trace.len() <= samples.stats.iterations, "{:?}", samples.stats);
    assert!(samples.trace.iter().all(|x| x.size() == [6, 2]));
    assert_eq!(max_abs_diff(samples.trace.last().unwrap(), &samples.x), 0.0);
}

#[test]
fn labels_repeat_over_a_window_and_a_wrong_batch_is_an_error() {
    let (_vs, model) = conditional_model(ModelKind::Ddm);
    let labels = Tensor::from_slice(&[0i64, 2]);
    let predictor = Conditioned { model: &model, labels: Some(labels) };
    let x = Noise::new(0, 0, 6).normal(&[2], Kind::Double, Device::Cpu);
    let t = Tensor::full([6], 10, (Kind::Int64, Device::Cpu));
    let window = predictor.eps(&x, &t).unwrap();
    let each = Tensor::cat(
        &(0..3)
            .map(|k| {
                let rows = x.narrow(0, 2 * k, 2);
                predictor.eps(&rows, &t.narrow(0, 0, 2)).unwrap()
            })
            .collect::<Vec<_>>(),
        0,
    );
    assert!(max_abs_diff(&window, &each) < 1e-12);
    let err = predictor.eps(&x.narrow(0, 0, 5), &t.narrow(0, 0, 5)).unwrap_err();
    assert!(err.to_string().contains("multiple of 2"), "{err}");
}

#[test]
fn a_state_that_turns_non_finite_stops_the_sampler_with_its_step() {
    let schedule = schedule(100);
    let blows_up = |x: &Tensor, t: &Tensor| -> cdm::Result<Tensor> {
        // log 1 = 0 above level 50, log 0 = −∞ from level 50 down.
        Ok(x + t.gt(50).to_kind(Kind::Double).log().unsqueeze(1))
    };
    let levels = schedule.sampling_levels(10).unwrap();
    let table = StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &levels).unwrap();
    let x_t = Noise::new(0, 0, 2).normal(&[2], Kind::Double, Device::Cpu);
    let err = sequential(&blows_up, &table, x_t.shallow_clone(), &mut Noise::new(0, 0, 2), &mut |_| {}).unwrap_err();
    assert_eq!(err.to_string(), "sampler state became non-finite at step 5 (level 50)");
    let err = parallel(&blows_up, &table, x_t, &mut Noise::new(0, 0, 2), &picard(4, 0.1), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("non-finite at step 5"), "{err}");
}

#[test]
fn bad_parallel_options_are_named_errors() {
    let schedule = schedule(10);
    let zero = |x: &Tensor, _t: &Tensor| -> cdm::Result<Tensor> { Ok(x.zeros_like()) };
    let table = StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &schedule.sampling_levels(5).unwrap()).unwrap();
    let x_t = Tensor::zeros([1, 2], (Kind::Double, Device::Cpu));
    for (opts, what) in [
        (picard(0, 0.1), "window"),
        (picard(2, -1.0), "tolerance"),
        (ParallelOptions { solver: ParallelSolver::Anderson, history: 0, ..picard(2, 0.1) }, "history"),
    ] {
        let err =
            parallel(&zero, &table, x_t.shallow_clone(), &mut Noise::new(0, 0, 1), &opts, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    assert!(StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &[5, 5, 0]).is_err());
    assert!(StepTable::new(SamplerKind::Ddim, -1.0, &schedule, &[5, 0]).is_err());
}

/// DPM-Solver++(2M) as the samplers before the step table wrote it (a first-order step first,
/// and onto ᾱ = 1), on any decreasing grid.
fn dpm_solver_pp_2m_reference(
    model: &dyn NoisePredictor,
    schedule: &Schedule,
    x_t: &Tensor,
    levels: &[usize],
) -> Tensor {
    let lambda = |t: usize| 0.5 * (schedule.alpha_bar(t) / (1.0 - schedule.alpha_bar(t))).ln();
    let mut x = x_t.shallow_clone();
    let mut previous: Option<(Tensor, f64)> = None;
    for pair in levels.windows(2) {
        let (t, s) = (pair[0], pair[1]);
        let eps = model.eps(&x, &Tensor::full([x.size()[0]], t as i64, (Kind::Int64, Device::Cpu))).unwrap();
        let (alpha_t, sigma_t) = (schedule.alpha_bar(t).sqrt(), (1.0 - schedule.alpha_bar(t)).sqrt());
        let x0 = (&x - eps * sigma_t) / alpha_t;
        let h = lambda(s) - lambda(t);
        x = if schedule.alpha_bar(s) >= 1.0 {
            x0.shallow_clone()
        } else {
            let d = match &previous {
                Some((x0_prev, h_prev)) => &x0 * (1.0 + 0.5 * h / h_prev) - x0_prev * (0.5 * h / h_prev),
                None => x0.shallow_clone(),
            };
            &x * ((1.0 - schedule.alpha_bar(s)).sqrt() / sigma_t) - d * (schedule.alpha_bar(s).sqrt() * (-h).exp_m1())
        };
        previous = Some((x0, h));
    }
    x
}

#[test]
fn a_grid_may_end_above_level_zero() {
    // diffusers' DPM-Solver++(2M) stops at its smallest σ, level 1 here: every sampler takes
    // such a grid again, sequentially and in parallel, as before the step table refused it.
    let schedule = schedule(1000);
    let mut levels = schedule.sampling_levels(20).unwrap();
    *levels.last_mut().unwrap() = 1;
    let mixture = mixture_eps(&schedule, 1.0, 0.3);
    let x_t = Noise::new(3, 0, 8).normal(&[2], Kind::Double, Device::Cpu);
    for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::Dpm2, SamplerKind::Dpmpp2m] {
        let table = StepTable::new(sampler, 0.0, &schedule, &levels).unwrap();
        assert_eq!(table.levels().last(), Some(&1));
        // DDPM's last step, onto level 1, draws its posterior noise like any other.
        assert_eq!(table.draws_noise(19), sampler == SamplerKind::Ddpm, "{sampler:?}");
        let expected = run_sequential(&mixture, &table, &x_t, 5);
        let (got, _) = run_parallel(&mixture, &table, &x_t, 5, picard(8, 0.0));
        let gap = max_abs_diff(&got, &expected);
        assert!(gap < 1e-9, "{sampler:?}: parallel {gap} off the sequential sampler");
    }
    let table = StepTable::new(SamplerKind::Dpmpp2m, 0.0, &schedule, &levels).unwrap();
    let gap = max_abs_diff(
        &run_sequential(&mixture, &table, &x_t, 0),
        &dpm_solver_pp_2m_reference(&mixture, &schedule, &x_t, &levels),
    );
    assert!(gap < 1e-10, "DPM-Solver++(2M) ending at level 1 is {gap} off its old update");
    // DDIM on Gaussian data is the exact linear map of the grid, wherever it stops.
    let gaussian =
        Classifier::from_backbone(Box::new(gaussian_backbone(schedule.alpha_bars(), S, 2)), schedule.clone(), vec![2]);
    let model = Conditioned { model: &gaussian, labels: None };
    let table = StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &levels).unwrap();
    let gain = gaussian_ddim_gain(|t| schedule.alpha_bar(t), &levels, S);
    let gap = max_abs_diff(&run_sequential(&model, &table, &x_t, 0), &(&x_t * gain));
    assert!(gap < 1e-9, "DDIM ending at level 1 is {gap} off the exact map");
    assert!(StepTable::new(SamplerKind::Ddim, 0.0, &schedule, &[5, 1, 2]).is_err());
}

/// The table of docs/results.md §8.1: the solvers on the exact denoiser of a two-mode mixture
/// (no model error), the samplers, several windows; it asserts the bounds it shows.
/// `cargo test --release --test parallel -- --ignored --nocapture`
/// docs/results.md §8.1's table, printed (`cargo test --release --test parallel solver_table --
/// --nocapture`) and its bounds asserted; about a second, so it runs with the others.
#[test]
fn solver_table_on_a_mixture() {
    let schedule = schedule(1000);
    let model = mixture_eps(&schedule, 1.0, 0.2);
    println!("| sampler | samples | window | solver | iterations | evaluations | max abs gap to sequential |");
    println!("|---|---|---|---|---|---|---|");
    for (sampler, steps) in
        [(SamplerKind::Ddpm, 1000), (SamplerKind::Ddim, 100), (SamplerKind::Ddim, 50), (SamplerKind::Ddim, 25)]
    {
        let table = StepTable::new(sampler, 0.0, &schedule, &schedule.sampling_levels(steps).unwrap()).unwrap();
        for (n, window) in [1, 32].into_iter().flat_map(|n| [16, 32, 48, steps].map(|w| (n, w))) {
            let x_t = Noise::new(5, 0, n).normal(&[2], Kind::Double, Device::Cpu);
            let expected = run_sequential(&model, &table, &x_t, 9);
            for solver in [ParallelSolver::Picard, ParallelSolver::Anderson, ParallelSolver::Newton] {
                let opts = ParallelOptions { solver, ..picard(window, 0.1) };
                let (x, cost) = run_parallel(&model, &table, &x_t, 9, opts);
                let gap = max_abs_diff(&x, &expected);
                println!(
                    "| {sampler:?}-{steps} | {n} | {window} | {solver:?} | {} | {} ({:.2}x) | {gap:.1e} |",
                    cost.iterations,
                    cost.evaluations,
                    cost.evaluations as f64 / steps as f64
                );
                // What the table shows: every run lands within 1e-2 of the sequential samples
                // and each state is evaluated fewer than five times; DDIM takes at most 11
                // iterations, DDPM-1000 at most 80 (p = 16), 46 (p = 32) and 36 (p = 48).
                let case = format!("{sampler:?}-{steps}, {n} samples, window {window}, {solver:?}");
                assert!(gap < 1e-2, "{case}: {gap} off the sequential samples");
                assert!(cost.evaluations < 5 * steps, "{case}: {} evaluations", cost.evaluations);
                let most = match (sampler, window) {
                    (SamplerKind::Ddim, _) => 11,
                    (_, 16) => 80,
                    (_, 32) => 46,
                    (_, 48) => 36,
                    _ => 19,
                };
                assert!(cost.iterations <= most, "{case}: {} iterations", cost.iterations);
            }
        }
    }
}
