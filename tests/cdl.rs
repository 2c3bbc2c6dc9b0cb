//! The contrastive diffusion loss (Wu et al. 2024, arXiv:2407.08946) and what it stands on:
//! continuous noise levels against their closed forms, the I-MMSE log p and log p_ζ and the
//! noise classifier's logit against the exact densities of Gaussian data, the CDL gradient
//! against finite differences, and a short training that must beat chance.
mod common;

use cdm::base::GaussianBase;
use cdm::denoiser::Denoiser;
use cdm::eval::{exact_noise_classifier, noise_classifier, Batches};
use cdm::likelihood::{immse_log_prob, noise_logits, noised_predictor, GaussianReference};
use cdm::loss::{cdl_loss, CdlConfig, ZetaPrior};
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::predictor::NoisePredictor;
use cdm::rng::Rng;
use cdm::sample::clip::ClipX0;
use cdm::schedule::{Levels, LogSnrProposal, Schedule, ScheduleConfig, ScheduleKind};
use cdm::train::{RunConfig, TrainConfig, Trainer};
use common::{assert_close, max_abs_diff};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn sigmoid(g: f64) -> f64 {
    1.0 / (1.0 + (-g).exp())
}

fn logit(a: f64) -> f64 {
    (a / (1.0 - a)).ln()
}

fn linear() -> Schedule {
    Schedule::new(ScheduleConfig::new(ScheduleKind::Linear, 1000)).unwrap()
}

#[test]
fn fractional_levels_interpolate_log_snr() {
    let s = linear();
    // Inside [1, T]: γ interpolated linearly between the integer levels.
    for (t, f) in [(1usize, 0.25), (300, 0.5), (999, 0.9)] {
        let gamma = (1.0 - f) * logit(s.alpha_bar(t)) + f * logit(s.alpha_bar(t + 1));
        assert_close(s.alpha_bar_at(t as f64 + f), sigmoid(gamma), 1e-14, "ᾱ at a fractional level");
    }
    // The end intervals, where γ is infinite at the integer end: ᾱ linear.
    assert_close(s.alpha_bar_at(0.5), (1.0 + s.alpha_bar(1)) / 2.0, 1e-15, "ᾱ(0.5)");
    assert_close(s.alpha_bar_at(1000.5), s.alpha_bar(1000) / 2.0, 1e-15, "ᾱ(T + ½)");
    // The log-SNR schedule is linear in γ by construction, so its fractional levels are exact.
    let logsnr = Schedule::new(ScheduleConfig::new(ScheduleKind::LogSnr, 33)).unwrap();
    let step = 32.0 / 32.0;
    for t in [1.0, 2.5, 17.125, 33.0] {
        assert_close(logsnr.alpha_bar_at(t), sigmoid(20.0 - step * (t - 1.0)), 1e-14, "log-SNR schedule");
    }
    // Integer levels as Int64 and as floats give the table.
    let ints = Tensor::from_slice(&[0i64, 1, 500, 1001]);
    let like = Tensor::zeros([4, 2], (Kind::Double, Device::Cpu));
    let (a, sigma) = s.coefficients(&ints, &like);
    let (a_f, sigma_f) = s.coefficients(&ints.to_kind(Kind::Double), &like);
    assert!(max_abs_diff(&a, &a_f) < 1e-15 && max_abs_diff(&sigma, &sigma_f) < 1e-12);
    assert_close(a.double_value(&[2, 0]), s.alpha_bar(500).sqrt(), 0.0, "table");
    // √ᾱ² + σ² = 1 at fractional levels, σ kept to full relative precision at high SNR.
    let t = Tensor::from_slice(&[0.3, 1.5, 640.7, 1000.9]);
    let (a, sigma) = s.coefficients(&t, &t);
    assert!(max_abs_diff(&(a.square() + sigma.square()), &t.ones_like()) < 1e-15);
    let sigma_low = s.coefficients(&Tensor::from_slice(&[1.5]), &t).1.double_value(&[0]);
    assert_close(sigma_low, (1.0 - s.alpha_bar_at(1.5)).sqrt(), 1e-12 * sigma_low, "σ at t = 1.5");
}

#[test]
fn level_at_logsnr_round_trips_through_the_coefficients() {
    let s = linear();
    let gamma = Tensor::from_slice(&[9.0, 3.3, 0.0, -4.2, -10.0]);
    let levels = s.levels_at_logsnr(&gamma);
    let (a, _) = s.coefficients(&levels, &levels);
    assert!(max_abs_diff(&a.square(), &gamma.sigmoid()) < 1e-13, "σ(γ) back from the level of γ");
    for (i, g) in Vec::<f64>::try_from(&gamma).unwrap().into_iter().enumerate() {
        assert_close(s.level_at_logsnr(g), levels.double_value(&[i as i64]), 1e-12, "scalar and tensor agree");
    }
}

#[test]
fn gaussian_base_and_clipping_are_exact_at_fractional_levels() {
    let s = linear();
    let mut vs = VarStore::new(Device::Cpu);
    let base = GaussianBase::new(&vs.root(), &[3], 1);
    vs.double();
    let data = Rng::new(1).normal(&[500, 3], Kind::Double) * Tensor::from_slice(&[0.3, 1.0, 2.0]) + 0.5;
    base.fit(&data, None).unwrap();
    // Closed form: ε̂ = σ·(ᾱΣ + σ²I)⁻¹(x − √ᾱ·μ), Σ the data covariance plus the base's floor.
    let mean = data.mean_dim(0, false, Kind::Double);
    let centred = &data - &mean;
    let floor = (2.0f64 / 256.0).powi(2) / 12.0;
    let cov = centred.tr().matmul(&centred) / 500.0 + Tensor::eye(3, (Kind::Double, Device::Cpu)) * floor;
    let x_t = Rng::new(2).normal(&[4, 3], Kind::Double);
    let t = Tensor::from_slice(&[0.4, 12.5, 400.25, 999.75]);
    let eps = base.eps(&x_t, &t, None, &s);
    for i in 0..4 {
        let abar = s.alpha_bar_at(t.double_value(&[i]));
        let sigma2 = 1.0 - abar;
        let m = &cov * abar + Tensor::eye(3, (Kind::Double, Device::Cpu)) * sigma2;
        let r = (x_t.get(i) - &mean * abar.sqrt()).unsqueeze(1);
        let expected = m.inverse().matmul(&r).squeeze_dim(1) * sigma2.sqrt();
        assert!(max_abs_diff(&eps.get(i), &expected) < 1e-10, "level {i}: {} vs {expected}", eps.get(i));
    }
    // x̂0 clipping: ε̃ = (x_t − √ᾱ·clip(x̂0))/σ with the exact fractional-level coefficients.
    let zero = |z: &Tensor, _: &Tensor| Ok(z.zeros_like());
    let clip = ClipX0 { inner: &zero, schedule: &s, limit: 1.0 };
    let got = clip.eps(&x_t, &t).unwrap();
    for i in 0..4 {
        let abar = s.alpha_bar_at(t.double_value(&[i]));
        let x0 = (x_t.get(i) / abar.sqrt()).clamp(-1.0, 1.0);
        let expected = (x_t.get(i) - x0 * abar.sqrt()) / (1.0 - abar).sqrt();
        assert!(max_abs_diff(&got.get(i), &expected) < 1e-12, "clipped ε̂ at level {i}");
    }
}

/// Data N(μ, diag λ) in 3 dimensions, and its exact noise predictor at log SNR γ:
/// E[ε | z] = √σ(−γ)·(z − √σ(γ)·μ)/(σ(γ)·λ + σ(−γ)).
const MU: [f64; 3] = [0.5, -1.0, 0.0];
const LAMBDA: [f64; 3] = [0.04, 0.25, 1.5];

fn gaussian_eps(z: &Tensor, gamma: &Tensor) -> cdm::Result<Tensor> {
    let (mu, lambda) = (Tensor::from_slice(&MU).unsqueeze(0), Tensor::from_slice(&LAMBDA).unsqueeze(0));
    let (signal, noise) = (gamma.sigmoid().unsqueeze(1), (-gamma).sigmoid().unsqueeze(1));
    Ok(noise.sqrt() * (z - signal.sqrt() * mu) / (signal * lambda + noise))
}

/// log N(x; √a·μ, a·λ + 1 − a) per row.
fn gaussian_log_density(x: &Tensor, a: f64) -> Tensor {
    let var = Tensor::from_slice(&LAMBDA) * a + (1.0 - a);
    let centred = x - Tensor::from_slice(&MU) * a.sqrt();
    ((centred.square() / &var + (var * (2.0 * std::f64::consts::PI)).log()) * -0.5).sum_dim_intlist(
        1,
        false,
        Kind::Double,
    )
}

/// Mean and standard error over `copies` independent estimates per point: estimates of
/// `points` rows replicated `copies` times, [points·copies] → ([points], [points]).
fn mean_and_error(estimates: &Tensor, points: i64, copies: i64) -> (Tensor, Tensor) {
    let e = estimates.reshape([copies, points]);
    (e.mean_dim(0, false, Kind::Double), e.std_dim(0, true, false) / (copies as f64).sqrt())
}

/// |estimate − exact| within 4 standard errors plus `bias` (truncation of the integral).
fn assert_within_error(what: &str, mean: &Tensor, error: &Tensor, exact: &Tensor, bias: f64) {
    let off = (mean - exact).abs();
    let allowed = error * 4.0 + bias;
    assert!(
        bool::try_from(off.le_tensor(&allowed).all()).unwrap(),
        "{what}: estimate {mean} vs exact {exact}, standard error {error}"
    );
    // The test must be able to fail: the error bars are far below the values' spread.
    let spread = (exact.max() - exact.min()).double_value(&[]);
    assert!(error.max().double_value(&[]) < 0.1 * spread, "{what}: standard error {error} too large to test anything");
}

#[test]
fn immse_matches_the_exact_log_densities_of_gaussian_data() {
    let (points, copies) = (5i64, 64i64);
    let x = common::det_points(points, 3) * 0.5;
    let replicated = x.repeat([copies, 1]);
    // Relative to N(0, I), whose integrand differs from the data's: the estimate is not exact
    // by construction. Over γ ∈ [−16, 20] the tails left out are below 1e-5 nats.
    let reference = GaussianReference::standard(3);
    let proposal = LogSnrProposal::covering(-16.0, 20.0).unwrap();
    let estimate = immse_log_prob(gaussian_eps, &replicated, &reference, &proposal, 2000, &mut Rng::new(4)).unwrap();
    let (mean, error) = mean_and_error(&estimate, points, copies);
    assert_within_error("log p(x)", &mean, &error, &gaussian_log_density(&x, 1.0), 1e-3);

    // log p_ζ(z) at ζ = 3 through the noised predictor, which asks the data's predictor only
    // below ζ.
    let zeta = 3.0;
    let below = |z: &Tensor, gamma: &Tensor| {
        assert!(gamma.max().double_value(&[]) < zeta, "asked above ζ");
        gaussian_eps(z, gamma)
    };
    let noised = noised_predictor(below, Tensor::from(zeta));
    let estimate = immse_log_prob(noised, &replicated, &reference, &proposal, 2000, &mut Rng::new(5)).unwrap();
    let (mean, error) = mean_and_error(&estimate, points, copies);
    assert_within_error("log p_ζ(z)", &mean, &error, &gaussian_log_density(&x, sigmoid(zeta)), 1e-3);

    // Relative to the data's own Gaussian, the estimate is exact draw by draw.
    let own = GaussianReference { mean: Tensor::from_slice(&MU), var: Tensor::from_slice(&LAMBDA) };
    let exact = immse_log_prob(gaussian_eps, &x, &own, &proposal, 3, &mut Rng::new(6)).unwrap();
    assert!(max_abs_diff(&exact, &gaussian_log_density(&x, 1.0)) < 1e-12);
    // h_G and mmse_G of that reference: the entropy and Σ_k σ(γ + log λ_k).
    let entropy: f64 = LAMBDA.iter().map(|l| 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * l).ln()).sum();
    assert_close(own.entropy(), entropy, 1e-12, "h_G");
    let mmse: f64 = LAMBDA.iter().map(|l| sigmoid(1.5 + l.ln())).sum();
    assert_close(own.mmse(&Tensor::from_slice(&[1.5])).double_value(&[0]), mmse, 1e-12, "mmse_G");
}

#[test]
fn noise_logit_matches_its_closed_form_on_gaussian_data() {
    let (points, copies) = (4i64, 64i64);
    let z = common::det_points(points, 3) * 0.7;
    let zeta = Tensor::from_slice(&[1.0, 2.0, 4.0, 6.0]);
    let proposal = LogSnrProposal::covering(-16.0, 20.0).unwrap();
    let logits =
        noise_logits(gaussian_eps, &z.repeat([copies, 1]), &zeta.repeat([copies]), &proposal, 1024, &mut Rng::new(8))
            .unwrap();
    let (mean, error) = mean_and_error(&logits, points, copies);
    let exact: Vec<Tensor> = (0..points)
        .map(|i| {
            let row = z.narrow(0, i, 1);
            gaussian_log_density(&row, sigmoid(zeta.double_value(&[i]))) - gaussian_log_density(&row, 1.0)
        })
        .collect();
    let exact = Tensor::cat(&exact, 0);
    // The logits run from about −0.6 to 3 nats here; ζ = 6 is the small one.
    assert!(exact.abs().max().double_value(&[]) > 0.5);
    assert_within_error("log p_ζ(z) − log p(z)", &mean, &error, &exact, 1e-3);
}

/// A DDM on an MLP over 2-D points on continuous levels, in f64.
fn small_ddm(hidden: usize) -> ModelConfig {
    ModelConfig {
        kind: ModelKind::Ddm,
        schedule: ScheduleConfig {
            levels: Levels::Continuous(LogSnrProposal { loc: 1.0, scale: 3.0 }),
            ..ScheduleConfig::new(ScheduleKind::LogSnr, 200)
        },
        backbone: BackboneConfig::Mlp(MlpConfig { hidden, blocks: 1, ..MlpConfig::default() }),
        data_shape: vec![2],
        gaussian_base: false,
        base_per_class: false,
    }
}

#[test]
fn cdl_gradient_matches_finite_differences() {
    let mut vs = VarStore::new(Device::Cpu);
    let model = Denoiser::new(&vs.root(), &small_ddm(8).network().unwrap()).unwrap();
    vs.double();
    let mut rng = Rng::new(7);
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&(rng.normal(&v.size(), Kind::Double) * 0.5));
        }
    });
    let x0 = Rng::new(1).normal(&[6, 2], Kind::Double);
    let cdl = CdlConfig { weight: 1.0, images: 4, draws: 5, zeta: ZetaPrior::Uniform };
    // The same seed: the same coins, ζ, γ and ε at every evaluation.
    let loss = || cdl_loss(&model, &x0, None, &cdl, true, &mut Rng::new(3)).unwrap().loss;
    let value = loss();
    assert!(value.double_value(&[]) > 0.0);
    for (_, p) in vs.variables() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    value.backward();
    let mut checked = 0;
    for (name, p) in vs.variables() {
        let grad = p.grad();
        let flat = p.view(-1);
        for i in [0, p.numel() as i64 / 2] {
            let h = 1e-6;
            let original = flat.double_value(&[i]);
            let at = |v: f64| {
                tch::no_grad(|| {
                    let _ = flat.get(i).fill_(v);
                });
                loss().double_value(&[])
            };
            let numeric = (at(original + h) - at(original - h)) / (2.0 * h);
            at(original);
            let analytic = grad.view(-1).double_value(&[i]);
            assert_close(analytic, numeric, 1e-6 * (1.0 + numeric.abs()), &format!("∂CDL/∂{name}[{i}]"));
            checked += 1;
        }
    }
    assert!(checked >= 8);
}

#[test]
fn training_with_cdl_beats_chance_on_held_out_points() {
    // A small cube, std 0.014 per coordinate: data noised at ζ ∈ [6, 15] (σ up to 0.05) leaves
    // it visibly, so the noise classifier has something to learn. Its continuous levels span
    // log SNR [−0.5, 17.5], inside the log-SNR schedule's [−12, 20]. A Gaussian base gives the
    // MLP inputs of unit scale to learn from: without one, a few hundred steps leave the
    // denoiser so poor that its noisy logits score above chance (0.71 after 600 steps). The
    // base alone already tells noised points at low ζ (0.66 here, 0.69 = ln 2 is chance); the
    // trained model must stay below chance with the CDL term pulling on its weights.
    let spec = "uniform:d=2,g=0.05";
    let data = cdm::data::Dataset::open(spec).unwrap();
    let proposal = cdm::train::data_logsnr_proposal(&data, 0).unwrap();
    let (lo, hi) = proposal.range();
    assert!((-1.0..0.0).contains(&lo) && (17.0..18.0).contains(&hi), "proposal {proposal:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut model = small_ddm(64);
    model.schedule.levels = Levels::Continuous(proposal);
    model.gaussian_base = true;
    let cdl = CdlConfig { weight: 1.0, images: 16, draws: 32, zeta: ZetaPrior::Logistic };
    let config = RunConfig {
        data: spec.into(),
        model,
        train: TrainConfig {
            steps: 300,
            batch_size: 128,
            checkpoint_every: 10_000,
            cdl: Some(cdl),
            ..Default::default()
        },
    };
    let mut trainer = Trainer::open(dir.path(), config, Device::Cpu).unwrap();
    // 1024 points: a point's coin and ζ move the mean loss by ±0.02 over 256 points.
    let held_out = data.eval_points(1024, 77).to_kind(Kind::Float);
    let score = |model: &Model| {
        // Many draws per point: a logit's Monte-Carlo noise raises the mean softplus.
        let wide = CdlConfig { draws: 256, ..cdl };
        let batches = Batches::new(128 * 2 * 256, (Kind::Float, Device::Cpu));
        let score = noise_classifier(model, &held_out, &wide, &batches, 11).unwrap();
        assert_eq!(score.n, 1024, "every held-out point, in chunks of 128");
        (score.loss, score.accuracy)
    };
    let (untrained, _) = score(trainer.model());
    let mut last = None;
    trainer.run(&mut |r| last = r.cdl.zip(r.cdl_accuracy)).unwrap();
    assert!(last.is_some(), "the step report carries the CDL loss and accuracy");
    let (loss, accuracy) = score(trainer.model());
    eprintln!(
        "held-out CDL loss: untrained (the Gaussian base alone) {untrained}, trained {loss}, accuracy {accuracy}"
    );
    assert!(loss < 2f64.ln() - 0.02, "held-out CDL loss {loss}, chance {}", 2f64.ln());
    assert!(loss < untrained + 0.01, "held-out CDL loss {loss}, the base alone {untrained}");
    assert!(accuracy > 0.52, "held-out noise-classifier accuracy {accuracy}");
    // The Bayes classifier on the same points (the same coins, ζ and noise): the floor.
    let wide = CdlConfig { draws: 256, ..cdl };
    let batches = Batches::new(128 * 2 * 256, (Kind::Float, Device::Cpu));
    let density = data.density().unwrap();
    let bayes =
        exact_noise_classifier(density, &proposal, &held_out.to_kind(Kind::Double), &wide, &batches, 11).unwrap();
    eprintln!("Bayes classifier on the same points: {bayes:?}");
    assert_eq!(bayes.n, 1024);
    assert!(bayes.loss < loss && bayes.loss < 2f64.ln() - 0.05, "Bayes {bayes:?}, trained {loss}");
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    assert!(log.contains("\"cdl\":") && log.contains("\"cdl_accuracy\":"));
}

#[test]
fn init_from_starts_from_a_runs_weights_with_a_fresh_optimiser() {
    let spec = "gmm2d";
    let first = tempfile::tempdir().unwrap();
    let mut model = small_ddm(16);
    model.schedule.levels = Levels::Discrete;
    let config = RunConfig {
        data: spec.into(),
        model: model.clone(),
        train: TrainConfig { steps: 20, batch_size: 64, ..Default::default() },
    };
    Trainer::open(first.path(), config.clone(), Device::Cpu).unwrap().run(&mut |_| {}).unwrap();
    let trained = cdm::checkpoint::load_model(first.path(), Device::Cpu, true).unwrap();
    let second = tempfile::tempdir().unwrap();
    // Fine-tuned on continuous levels with CDL: the model may change how its levels are drawn.
    model.schedule.levels = Levels::Continuous(LogSnrProposal { loc: 0.0, scale: 3.0 });
    let tuned = RunConfig {
        model,
        train: TrainConfig {
            init_from: Some(first.path().to_path_buf()),
            cdl: Some(CdlConfig::default()),
            lr: 1e-4,
            ..config.train
        },
        ..config
    };
    let trainer = Trainer::open(second.path(), tuned.clone(), Device::Cpu).unwrap();
    assert_eq!(trainer.step(), 0, "a fresh optimiser");
    let x = Rng::new(2).normal(&[5, 2], Kind::Float);
    let t = Tensor::from_slice(&[3i64, 50, 100, 150, 190]);
    let eps = |m: &Model| m.eps(&x, &t, None).unwrap();
    assert!(max_abs_diff(&eps(trainer.model()), &eps(&trained.model)) < 1e-12, "the run's EMA weights");
    // Another model is refused.
    let mut other = tuned;
    other.model.backbone = BackboneConfig::Mlp(MlpConfig { hidden: 32, blocks: 1, ..MlpConfig::default() });
    let third = tempfile::tempdir().unwrap();
    assert!(Trainer::open(third.path(), other, Device::Cpu).is_err());
}

#[test]
fn zeta_priors_draw_on_their_ranges() {
    // Each prior's draws fill its support and centre where it is symmetric: the image runs'
    // [6, 15] (logistic and uniform), and the trained range loc ± 3·scale.
    let trained = LogSnrProposal { loc: -3.0, scale: 2.0 };
    for (prior, lo, hi) in
        [(ZetaPrior::Logistic, 6.0, 15.0), (ZetaPrior::Uniform, 6.0, 15.0), (ZetaPrior::Trained, -9.0, 3.0)]
    {
        let zeta = prior.draw(20_000, &trained, &mut Rng::new(3));
        let (min, max) = (zeta.min().double_value(&[]), zeta.max().double_value(&[]));
        assert!(min >= lo && max <= hi, "{prior:?}: draws in [{min}, {max}]");
        assert!(min < lo + 0.1 * (hi - lo) && max > hi - 0.1 * (hi - lo), "{prior:?}: [{min}, {max}]");
        let mean = zeta.mean(Kind::Double).double_value(&[]);
        assert_close(mean, (lo + hi) / 2.0, 0.05 * (hi - lo), &format!("{prior:?}: mean"));
    }
}
