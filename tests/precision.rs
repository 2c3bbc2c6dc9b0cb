//! Mixed precision on the CPU: the same weights computed under bfloat16 autocast against f32
//! (logits, ε̂ by input gradient, the one-pass likelihood, a training step's loss), the autocast
//! region's bookkeeping, and why the cumsum head must stay in f32.
//!
//! bf16 keeps 8 significant bits (a relative rounding of 2⁻⁹ ≈ 2e-3); through the tiny UNet's
//! dozen convolutions and its attention the measured relative errors are about 1e-2 (printed by
//! each test), so the tolerances are a few times that.
mod common;

use cdm::likelihood::log_prob_at_levels;
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, UnetConfig};
use cdm::precision::{Autocast, Precision};
use cdm::rng::Rng;
use cdm::train::{LrDecay, RunConfig, TrainConfig, Trainer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Held by every test that builds a model: a model draws its initial weights from libtorch's
/// global generator, so one built on another thread would change a seeded run's weights.
static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relative tolerance of bf16 against f32 for logits, ε̂ and log-densities (measured ≈ 1e-2).
const BF16_TOLERANCE: f64 = 5e-2;

/// max|a − b| / max|b|, printed.
fn relative(a: &Tensor, b: &Tensor, what: &str) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let off = (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-300);
    eprintln!("{what}: relative difference {off:.3e}");
    off
}

/// A conditional tiny UNet on 1×16×16 as `kind`.
fn config(kind: ModelKind) -> ModelConfig {
    common::conditional_unet_16(kind)
}

/// The model in f32 with seeded noise on every weight (the heads start at zero, where nothing
/// would depend on the rest).
fn model(kind: ModelKind) -> (VarStore, Model) {
    let vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &config(kind)).unwrap();
    let mut rng = Rng::new(7);
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            let _ = var.g_add_(&(rng.normal(&var.size(), Kind::Double) * 0.05).to_kind(var.kind()));
        }
    });
    (vs, model)
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let x = Rng::new(1).normal(&[6, 1, 16, 16], Kind::Float);
    let t = Tensor::from_slice(&[0i64, 1, 10, 300, 999, 1001]);
    let labels = Tensor::from_slice(&[0i64, 3, 9, 10, 5, 10]);
    (x, t, labels)
}

#[test]
fn bf16_logits_eps_and_likelihood_are_f32_within_tolerance() {
    let _lock = lock();
    let (_vs, mut model) = model(ModelKind::Cdm);
    let (x, t, labels) = inputs();
    let run = |model: &Model| {
        let c = model.classifier().unwrap();
        let logits = tch::no_grad(|| c.logits(&x, Some(&labels), false)).unwrap();
        let eps = model.eps(&x, &t, Some(&labels)).unwrap();
        let log_p = log_prob_at_levels(c, &x, &[0, 1, 500, 1000], Some(&labels)).unwrap();
        (logits, eps, log_p)
    };
    let (logits, eps, log_p) = run(&model);
    model.set_precision(Precision::Bf16);
    let (logits_bf16, eps_bf16, log_p_bf16) = run(&model);
    // The head and all read from it come back in f32, and the region is left behind.
    assert_eq!((logits_bf16.kind(), eps_bf16.kind(), log_p_bf16.kind()), (Kind::Float, Kind::Float, Kind::Float));
    assert!(!Autocast::is_enabled(Device::Cpu), "autocast is still on after the pass");
    assert!(relative(&logits_bf16, &logits, "logits bf16") <= BF16_TOLERANCE);
    assert!(relative(&eps_bf16, &eps, "ε̂ bf16") <= BF16_TOLERANCE);
    assert!(relative(&log_p_bf16, &log_p, "log p_t(x) bf16") <= BF16_TOLERANCE);
    let dims = 256.0 * std::f64::consts::LN_2;
    let bits = (&log_p_bf16 - &log_p).abs().max().double_value(&[]) / dims;
    eprintln!("log p_t(x) bf16: largest difference {bits:.2e} bits/dim");
    // And bf16 differs from f32 at all: the network did run in bf16.
    assert!(relative(&logits_bf16, &logits, "logits bf16") > 1e-5, "bf16 gave f32's logits exactly");
}

#[test]
fn bf16_ddm_eps_is_f32_within_tolerance() {
    let _lock = lock();
    let (_vs, mut model) = model(ModelKind::Ddm);
    let (x, t, labels) = inputs();
    let t = t.clamp(1, 1000);
    let eps = model.eps(&x, &t, Some(&labels)).unwrap();
    model.set_precision(Precision::Bf16);
    let eps_bf16 = model.eps(&x, &t, Some(&labels)).unwrap();
    assert_eq!(eps_bf16.kind(), Kind::Float);
    assert!(relative(&eps_bf16, &eps, "DDM ε̂ bf16") <= BF16_TOLERANCE);
}

/// The cumsum over T+2 = 1002 levels: summed in bf16, the logits of a trained-size network's
/// raw outputs lose whole units (nats), which the likelihood reads directly; in f32 they keep
/// the backbone's own bf16 error. This is why the head runs outside the autocast region.
#[test]
fn the_cumsum_head_needs_f32() {
    let _lock = lock();
    let (_vs, model) = model(ModelKind::Cdm);
    let (x, _, labels) = inputs();
    let c = model.classifier().unwrap();
    let logits = tch::no_grad(|| c.logits(&x, Some(&labels), false)).unwrap().to_kind(Kind::Double);
    // The raw outputs h back from the logits, as a bf16 backbone would hand them over.
    let n = logits.size()[1];
    let h = Tensor::cat(&[logits.narrow(1, 0, 1), logits.narrow(1, 1, n - 1) - logits.narrow(1, 0, n - 1)], 1)
        .to_kind(Kind::BFloat16);
    let in_f32 = h.to_kind(Kind::Float).cumsum(1, Kind::Float);
    let in_bf16 = h.cumsum(1, Kind::BFloat16);
    let exact = h.to_kind(Kind::Double).cumsum(1, Kind::Double);
    let (f32_error, bf16_error) =
        (relative(&in_f32, &exact, "cumsum in f32"), relative(&in_bf16, &exact, "cumsum in bf16"));
    assert!(
        bf16_error > 10.0 * f32_error,
        "a bf16 cumsum ({bf16_error:e}) is not much worse than f32's ({f32_error:e})"
    );
}

#[test]
fn autocast_regions_nest_and_restore() {
    assert!(!Autocast::is_enabled(Device::Cpu));
    {
        let _outer = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16, "autocast did not compute the product in bf16");
        {
            let _inner = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        }
        assert!(Autocast::is_enabled(Device::Cpu), "leaving the inner region ended the outer one");
    }
    assert!(!Autocast::is_enabled(Device::Cpu));
    assert!(Autocast::enter(Device::Cpu, Kind::Float).is_err(), "autocast to f32 is not a thing");
}

/// One training step's loss and gradient norm in bf16 against f32, from the same seed.
#[test]
fn a_bf16_training_step_is_f32_within_tolerance() {
    let _lock = lock();
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let mut reports = Vec::new();
        for precision in [Precision::F32, Precision::Bf16] {
            let dir = tempfile::tempdir().unwrap();
            let config = RunConfig {
                data: "uniform:d=1x16x16,g=2".into(),
                // Unconditional: the uniform data has no labels.
                model: ModelConfig {
                    backbone: BackboneConfig::Unet(UnetConfig { attention_resolutions: vec![8], ..UnetConfig::tiny() }),
                    ..config(kind)
                },
                train: TrainConfig {
                    steps: 2,
                    batch_size: 8,
                    precision,
                    lr_decay: LrDecay::Constant,
                    ..Default::default()
                },
            };
            let mut trainer = Trainer::open(dir.path(), config, Device::Cpu).unwrap();
            trainer.run(&mut |r| reports.push((r.loss, r.grad_norm))).unwrap();
            let saved: RunConfig = cdm::checkpoint::read_json(&cdm::checkpoint::paths(dir.path()).0).unwrap();
            assert_eq!(saved.train.precision, precision, "config.json does not record the precision");
        }
        let [(loss, norm), (loss_bf16, norm_bf16)] = reports[..] else { panic!("{reports:?}") };
        let off = |a: f64, b: f64| (a - b).abs() / b.abs();
        eprintln!("{kind:?} step 2: loss {loss} / bf16 {loss_bf16}, grad norm {norm} / bf16 {norm_bf16}");
        assert!(off(loss_bf16, loss) <= BF16_TOLERANCE, "{kind:?}: loss {loss_bf16} in bf16, {loss} in f32");
        assert!(off(norm_bf16, norm) <= BF16_TOLERANCE, "{kind:?}: grad norm {norm_bf16} in bf16, {norm} in f32");
    }
}
