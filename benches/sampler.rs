//! The samplers' own cost per iteration, with the network replaced by the exact denoiser of a
//! two-mode mixture (a dozen small operations, timed alone too): what a parallel iteration and
//! a sequential step cost beyond their network call. `cargo bench --bench sampler`; one thread,
//! f32, on the CPU; medians of five rounds. docs/results.md §13.2 records its figures.
use std::time::Instant;

use cdm::sample::{parallel, sequential, Noise, ParallelOptions, SamplerKind, StepTable};
use cdm::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use tch::{Device, Kind, Tensor};

const ROUNDS: usize = 5;
const RUNS_PER_ROUND: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// E[ε | x_t] for data ½N(−1, 0.3²) + ½N(1, 0.3²) in each coordinate.
fn mixture_eps(schedule: &Schedule, x: &Tensor, t: &Tensor) -> Tensor {
    let (a, sigma) = schedule.coefficients(t, x);
    let var = &a * &a * 0.09 + &sigma * &sigma;
    // tanh(a·x/var) is E[component mean | x_t]; each component's posterior mean then shrinks x.
    let mean = (&a * x / &var).tanh();
    let x0 = &mean + (x - &a * &mean) * &a * 0.09 / &var;
    (x - a * x0) / sigma
}

fn main() -> cdm::Result<()> {
    tch::set_num_threads(1);
    let schedule = Schedule::new(ScheduleConfig::new(ScheduleKind::Linear, 1000))?;
    let exact = |x: &Tensor, t: &Tensor| -> cdm::Result<Tensor> { Ok(mixture_eps(&schedule, x, t)) };
    println!(
        "| sampler | samples | window | iterations | parallel ms / iteration | its ε̂ call ms | sequential ms / step |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases = [
        (SamplerKind::Ddpm, 1000, 1, 48),
        (SamplerKind::Ddpm, 1000, 16, 48),
        (SamplerKind::Ddim, 50, 1, 50),
        (SamplerKind::Ddim, 50, 1, 16),
    ];
    for (sampler, steps, n, window) in cases {
        let table = StepTable::new(sampler, 0.0, &schedule, &schedule.sampling_levels(steps)?)?;
        let x_t = Noise::new(1, 0, n).normal(&[2], Kind::Float, Device::Cpu);
        let opts = ParallelOptions { window, ..ParallelOptions::default() };
        let (mut per_iteration, mut per_call, mut per_step, mut iterations) = (vec![], vec![], vec![], 0);
        for _ in 0..ROUNDS {
            let clock = Instant::now();
            iterations = 0;
            for _ in 0..RUNS_PER_ROUND {
                let mut noise = Noise::new(2, 0, n);
                iterations +=
                    parallel(&exact, &table, x_t.shallow_clone(), &mut noise, &opts, &mut |_| {})?.stats.iterations;
            }
            per_iteration.push(clock.elapsed().as_secs_f64() / iterations as f64);
            let (batch, levels) = (
                x_t.repeat([window as i64, 1]),
                Tensor::full([window as i64 * n as i64], 500, (Kind::Int64, Device::Cpu)),
            );
            let clock = Instant::now();
            for _ in 0..RUNS_PER_ROUND {
                let _ = exact(&batch, &levels)?;
            }
            per_call.push(clock.elapsed().as_secs_f64() / RUNS_PER_ROUND as f64);
            let clock = Instant::now();
            for _ in 0..RUNS_PER_ROUND {
                let _ = sequential(&exact, &table, x_t.shallow_clone(), &mut Noise::new(2, 0, n), &mut |_| {})?;
            }
            per_step.push(clock.elapsed().as_secs_f64() / (RUNS_PER_ROUND * steps) as f64);
        }
        println!(
            "| {sampler:?}-{steps} | {n} | {window} | {} | {:.4} | {:.4} | {:.4} |",
            iterations / RUNS_PER_ROUND,
            median(per_iteration) * 1e3,
            median(per_call) * 1e3,
            median(per_step) * 1e3
        );
    }
    Ok(())
}
