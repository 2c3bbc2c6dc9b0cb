//! Samplers against closed forms: with the exact ε̂ of Gaussian data N(0, s² I), DDIM maps
//! N(0, I) onto the data distribution, and DDPM (ancestral) matches within sampling error.
//! The ε̂ comes from the optimal classifier through its input gradient, so this also runs the
//! classifier-as-denoiser path end to end.
mod common;

use cdm::classifier::Classifier;
use cdm::model::ModelKind;
use cdm::predictor::{Conditioned, NoisePredictor};
use cdm::rng::Rng;
use cdm::sample::{ddim, ddpm, dpm_solver_2m, dpm_solver_pp_2m, ClipX0, DdimOptions, Guided, GuidedPair, Noise};
use cdm::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use common::{assert_close, conditional_mlp, gaussian_backbone, gaussian_ddim_gain, max_abs_diff};
use tch::{Device, Kind, Tensor};

const S: f64 = 0.5;

fn gaussian_model(kind: ScheduleKind) -> Classifier {
    let schedule = Schedule::new(ScheduleConfig::new(kind, 1000)).unwrap();
    Classifier::from_backbone(Box::new(gaussian_backbone(schedule.alpha_bars(), S, 2)), schedule, vec![2])
}

fn start(n: usize, seed: u64) -> Tensor {
    Noise::new(seed, 0, n).normal(&[2], Kind::Double, Device::Cpu)
}

/// Sample standard deviation over all coordinates.
fn std(x: &Tensor) -> f64 {
    x.std(true).double_value(&[])
}

#[test]
fn ddim_maps_standard_normal_onto_the_data() {
    for kind in [ScheduleKind::Linear, ScheduleKind::Cosine, ScheduleKind::Tdr] {
        let model = gaussian_model(kind);
        let denoiser = Conditioned { model: &model, labels: None };
        let levels = model.schedule().sampling_levels(100).unwrap();
        let x_t = start(2000, 1);
        let x0 = ddim(
            &denoiser,
            model.schedule(),
            x_t.shallow_clone(),
            &levels,
            &DdimOptions::default(),
            &mut Noise::new(2, 0, 2000),
            &mut |_| {},
        )
        .unwrap();
        // For Gaussian data every DDIM step is linear: x_s = (√ᾱ_s√ᾱ_t s² + √(1-ᾱ_s)√(1-ᾱ_t))/v_t · x_t.
        let gain = gaussian_ddim_gain(|t| model.schedule().alpha_bar(t), &levels, S);
        assert!(
            max_abs_diff(&x0, &(&x_t * gain)) < 1e-9,
            "{kind:?}: off the exact DDIM map by {}",
            max_abs_diff(&x0, &(&x_t * gain))
        );
        // ... and the map takes N(0, I) to N(0, s² I): the gain is s/√v_T up to discretisation,
        // which for 100 steps is 3% on the linear schedule (its first strided steps are coarse).
        let abar_t = model.schedule().alpha_bar(1000);
        let v_t = abar_t * S * S + 1.0 - abar_t;
        assert_close(gain, S / v_t.sqrt(), 0.04 * S, &format!("{kind:?} DDIM gain"));
        // 4000 coordinates add about 1.1% of sampling error to the standard deviation.
        assert_close(std(&x0), S, 0.03, &format!("{kind:?} sample std"));
    }
}

#[test]
fn ddpm_matches_the_data_moments_within_sampling_error() {
    let model = gaussian_model(ScheduleKind::Linear);
    let denoiser = Conditioned { model: &model, labels: None };
    let levels = model.schedule().sampling_levels(1000).unwrap();
    let n = 2000;
    let x0 = ddpm(&denoiser, model.schedule(), start(n, 3), &levels, &mut Noise::new(4, 0, n), &mut |_| {}).unwrap();
    // 4000 coordinates: the std of the sample variance is about s²·√(2/4000) ≈ 0.0056.
    assert_close(x0.mean(Kind::Double).double_value(&[]), 0.0, 0.03, "mean");
    assert_close(x0.var(true).double_value(&[]), S * S, 0.02, "variance");
}

#[test]
fn ddpm_equals_ddim_with_eta_one() {
    // DDIM's σ at η = 1 is the DDPM posterior variance, and its mean is the posterior mean.
    let model = gaussian_model(ScheduleKind::Cosine);
    let denoiser = Conditioned { model: &model, labels: None };
    let levels = model.schedule().sampling_levels(20).unwrap();
    let a = ddpm(&denoiser, model.schedule(), start(64, 5), &levels, &mut Noise::new(6, 0, 64), &mut |_| {}).unwrap();
    let b = ddim(
        &denoiser,
        model.schedule(),
        start(64, 5),
        &levels,
        &DdimOptions { eta: 1.0 },
        &mut Noise::new(6, 0, 64),
        &mut |_| {},
    )
    .unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-10, "differ by {}", max_abs_diff(&a, &b));
}

#[test]
fn samples_do_not_depend_on_the_batch() {
    let model = gaussian_model(ScheduleKind::Linear);
    let denoiser = Conditioned { model: &model, labels: None };
    let levels = model.schedule().sampling_levels(10).unwrap();
    let run = |first: u64, n: usize| {
        let x_t = Noise::new(9, first, n).normal(&[2], Kind::Double, Device::Cpu);
        ddpm(&denoiser, model.schedule(), x_t, &levels, &mut Noise::new(10, first, n), &mut |_| {}).unwrap()
    };
    let whole = run(0, 8);
    let halves = Tensor::cat(&[run(0, 3), run(3, 5)], 0);
    assert_eq!(max_abs_diff(&whole, &halves), 0.0);
}

#[test]
fn bulk_noise_is_each_samples_own_stream_for_any_split() {
    // Sample i's draw is stream i of the seed, whatever batch it is drawn in, in any precision.
    for kind in [Kind::Double, Kind::Float] {
        let whole = Noise::new(11, 0, 7).normal(&[3, 2], kind, Device::Cpu);
        assert_eq!(whole.size(), [7, 3, 2]);
        let split = Tensor::cat(
            &[
                Noise::new(11, 0, 2).normal(&[3, 2], kind, Device::Cpu),
                Noise::new(11, 2, 5).normal(&[3, 2], kind, Device::Cpu),
            ],
            0,
        );
        assert_eq!(max_abs_diff(&whole, &split), 0.0, "{kind:?}");
        let one_by_one: Vec<Tensor> = (0..7).map(|i| Rng::stream(11, i).normal(&[3, 2], kind)).collect();
        assert_eq!(max_abs_diff(&whole, &Tensor::stack(&one_by_one, 0)), 0.0, "{kind:?}");
    }
}

#[test]
fn guidance_in_one_double_pass_is_guidance_in_two() {
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (vs, model) = conditional_mlp(kind, 20);
        // The output layers start at zero: give every weight a value so ε̂ depends on the label.
        tch::no_grad(|| {
            for (i, (_, mut var)) in vs.variables().into_iter().enumerate() {
                var.copy_(&(Rng::new(i as u64).normal(&var.size(), Kind::Float) * 0.3));
            }
        });
        let labels = Tensor::from_slice(&[0i64, 2, 1]);
        // A window of two blocks of three states, as a parallel sampler lays them out.
        let x = Noise::new(5, 0, 6).normal(&[2], Kind::Float, Device::Cpu);
        let t = Tensor::from_slice(&[3i64, 7, 11, 15, 19, 20]);
        let conditional = Conditioned { model: &model, labels: Some(labels.shallow_clone()) };
        let unconditional = Conditioned { model: &model, labels: None };
        let two =
            Guided { conditional: &conditional, unconditional: &unconditional, weight: 1.25 }.eps(&x, &t).unwrap();
        let one = GuidedPair { model: &model, labels, null_label: 3, weight: 1.25 }.eps(&x, &t).unwrap();
        let label_effect = max_abs_diff(&conditional.eps(&x, &t).unwrap(), &unconditional.eps(&x, &t).unwrap());
        assert!(label_effect > 1e-3, "{kind:?}: the labels must matter for the test to mean anything");
        assert!(max_abs_diff(&one, &two) < 1e-5, "{kind:?}: {one:?} against {two:?}");
    }
}

#[test]
fn closure_predictors_plug_in() {
    // Any closure is a noise predictor: ε̂ = 0 makes DDIM return √ᾱ-scaled x0 = x_T/√ᾱ_T.
    let schedule = Schedule::new(ScheduleConfig::new(ScheduleKind::Tdr, 10)).unwrap();
    let zero = |x: &Tensor, _t: &Tensor| -> cdm::Result<Tensor> { Ok(x.zeros_like()) };
    let levels = schedule.sampling_levels(10).unwrap();
    let x_t = start(4, 11);
    let x0 = ddim(
        &zero as &dyn NoisePredictor,
        &schedule,
        x_t.shallow_clone(),
        &levels,
        &DdimOptions::default(),
        &mut Noise::new(0, 0, 4),
        &mut |_| {},
    )
    .unwrap();
    let expected = &x_t / schedule.alpha_bar(10).sqrt();
    assert!(max_abs_diff(&x0, &expected) < 1e-12);
}

/// x0/x_T for a deterministic sampler on Gaussian data (the map is linear), against the exact
/// probability-flow map s/√v_T.
fn ode_gain_error(kind: ScheduleKind, steps: usize, sampler: &str) -> f64 {
    let model = gaussian_model(kind);
    let denoiser = Conditioned { model: &model, labels: None };
    let schedule = model.schedule();
    let levels = schedule.sampling_levels(steps).unwrap();
    let x_t = Tensor::ones([1, 2], (Kind::Double, Device::Cpu));
    let x0 = match sampler {
        "ddim" => {
            ddim(&denoiser, schedule, x_t, &levels, &DdimOptions::default(), &mut Noise::new(0, 0, 1), &mut |_| {})
        }
        "dpm2" => dpm_solver_2m(&denoiser, schedule, x_t, &levels, &mut |_| {}),
        _ => dpm_solver_pp_2m(&denoiser, schedule, x_t, &levels, &mut |_| {}),
    }
    .unwrap();
    let v_t = schedule.alpha_bar(1000) * S * S + 1.0 - schedule.alpha_bar(1000);
    x0.double_value(&[0, 0]) / (S / v_t.sqrt()) - 1.0
}

#[test]
fn dpm_solvers_follow_the_probability_flow_at_second_order() {
    // Errors of x0/x_T against the exact map (measured: at 20 steps DDIM is off by 6-14%,
    // DPM-Solver-2M by 1.6-6.5%, DPM-Solver++(2M) by 0.3-4.4%).
    for kind in [ScheduleKind::Linear, ScheduleKind::Cosine, ScheduleKind::Tdr] {
        let [ddim10, dpm10, pp10] = ["ddim", "dpm2", "dpmpp2m"].map(|s| ode_gain_error(kind, 10, s).abs());
        let [ddim20, dpm20, pp20] = ["ddim", "dpm2", "dpmpp2m"].map(|s| ode_gain_error(kind, 20, s).abs());
        assert!(dpm20 < 0.5 * ddim20 && pp20 < 0.5 * ddim20, "{kind:?}: ddim {ddim20}, dpm2 {dpm20}, dpmpp2m {pp20}");
        // Doubling the steps halves a first-order error and quarters a second-order one (the
        // last step onto ᾱ = 1 is first order in both, so allow some slack).
        assert!((1.6..2.4).contains(&(ddim10 / ddim20)), "{kind:?}: DDIM error ratio {}", ddim10 / ddim20);
        assert!(dpm10 / dpm20 > 2.8, "{kind:?}: DPM-Solver-2M error ratio {}", dpm10 / dpm20);
        assert!(pp10 / pp20 > 2.8, "{kind:?}: DPM-Solver++(2M) error ratio {}", pp10 / pp20);
    }
}

#[test]
fn guidance_with_zero_weight_is_the_conditional_model() {
    let cond = |x: &Tensor, _t: &Tensor| -> cdm::Result<Tensor> { Ok(x * 0.3) };
    let uncond = |x: &Tensor, _t: &Tensor| -> cdm::Result<Tensor> { Ok(x * -0.2 + 1.0) };
    let x = Noise::new(3, 0, 4).normal(&[2], Kind::Double, Device::Cpu);
    let t = Tensor::full([4], 5, (Kind::Int64, Device::Cpu));
    let at = |w: f64| Guided { conditional: &cond, unconditional: &uncond, weight: w }.eps(&x, &t).unwrap();
    assert_eq!(max_abs_diff(&at(0.0), &(&x * 0.3)), 0.0);
    // w = 1.25 (the official default): (1 + w)·0.3x − w·(1 − 0.2x)
    let expected = &x * (2.25 * 0.3 + 1.25 * 0.2) - 1.25;
    assert!(max_abs_diff(&at(1.25), &expected) < 1e-12);
}

#[test]
fn clipping_bounds_the_implied_x0_and_leaves_the_rest() {
    let schedule = Schedule::new(ScheduleConfig::new(ScheduleKind::Linear, 100)).unwrap();
    // ε̂ = 0 implies x̂0 = x_t/√ᾱ_t.
    let zero = |x: &Tensor, _t: &Tensor| -> cdm::Result<Tensor> { Ok(x.zeros_like()) };
    let clipped = ClipX0 { inner: &zero, schedule: &schedule, limit: 1.0 };
    let x_t = Tensor::from_slice(&[0.3, -5.0, 2.0, 0.0]).reshape([2, 2]);
    let t = Tensor::from_slice(&[40i64, 40]);
    let eps = clipped.eps(&x_t, &t).unwrap();
    let x0 = schedule.x0_from_eps(&x_t, &eps, &t);
    let a = schedule.alpha_bar(40).sqrt();
    let expected = Tensor::from_slice(&[(0.3 / a).min(1.0), -1.0, 1.0, 0.0]).reshape([2, 2]);
    assert!(max_abs_diff(&x0, &expected) < 1e-12, "{x0:?}");
}
