//! The CDM loss differentiates through the input gradient (double backprop). Its weight
//! gradients, from the real MLP and loss code in f64, must match central finite differences.
use cdm::classifier::Classifier;
use cdm::distributed::Shard;
use cdm::loss::{cdm_loss, LossWeights};
use cdm::nets::{BackboneConfig, MlpConfig};
use cdm::network::NetworkConfig;
use cdm::rng::Rng;
use cdm::schedule::ScheduleConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn model() -> (VarStore, Classifier) {
    let mut vs = VarStore::new(Device::Cpu);
    let cfg = NetworkConfig {
        schedule: ScheduleConfig { timesteps: 20, ..Default::default() },
        backbone: BackboneConfig::Mlp(MlpConfig { hidden: 8, blocks: 1, ..MlpConfig::default() }),
        data_shape: vec![3],
        base_components: None,
    };
    let model = Classifier::new(&vs.root(), &cfg).unwrap();
    vs.double();
    // Random weights everywhere: the zero-initialised head would make most gradients vanish.
    let mut rng = Rng::new(7);
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&(rng.normal(&v.size(), Kind::Double) * 0.5));
        }
    });
    (vs, model)
}

/// The loss for a fixed draw of levels and noise.
fn loss(model: &Classifier, x0: &Tensor, ce_weight: f64) -> Tensor {
    cdm_loss(
        model,
        x0,
        None,
        &LossWeights { ce: ce_weight, ..LossWeights::default() },
        Shard::whole(x0.size()[0] as usize),
        &mut Rng::new(3),
    )
    .unwrap()
    .total
}

fn check_gradients(ce_weight: f64) {
    let (vs, model) = model();
    let x0 = Rng::new(1).normal(&[16, 3], Kind::Double);
    loss(&model, &x0, ce_weight).backward();
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in vs.variables() {
        let grad = var.grad();
        let mut var = var.shallow_clone();
        for i in 0..var.numel().min(4) as i64 {
            let flat = var.view([-1]);
            let original = flat.double_value(&[i]);
            let at = |v: f64| {
                let _ = tch::no_grad(|| flat.get(i).fill_(v));
                loss(&model, &x0, ce_weight).double_value(&[])
            };
            let numeric = (at(original + h) - at(original - h)) / (2.0 * h);
            at(original);
            let analytic = grad.view([-1]).double_value(&[i]);
            let tol = 1e-6 * (1.0 + numeric.abs());
            assert!((numeric - analytic).abs() < tol, "{name}[{i}]: autograd {analytic}, finite difference {numeric}");
            checked += 1;
        }
        var.zero_grad();
    }
    assert!(checked > 10);
}

#[test]
fn mse_term_gradients_match_finite_differences() {
    // With no CE term, every weight gradient flows through ∇_x F: this fails without create_graph.
    check_gradients(0.0);
}

#[test]
fn full_loss_gradients_match_finite_differences() {
    check_gradients(0.5);
}

/// Min-SNR-γ weighting: a γ above every level's SNR weighs all levels alike (the plain loss),
/// and a vanishing γ leaves only the levels with almost no signal, so the MSE term all but
/// disappears while the logged MSE stays unweighted.
#[test]
fn min_snr_weighting_spans_the_plain_loss_and_nothing() {
    let (_vs, model) = model();
    let x0 = Tensor::from_slice(&[0.3, -0.2, 0.5, -0.7, 0.1, 0.4]).reshape([2, 3]);
    let with = |min_snr| {
        let loss = cdm_loss(
            &model,
            &x0,
            None,
            &LossWeights { ce: 0.0, min_snr, ..LossWeights::default() },
            Shard::whole(x0.size()[0] as usize),
            &mut Rng::new(3),
        )
        .unwrap();
        (loss.total.double_value(&[]), loss.mse.double_value(&[]))
    };
    let (plain, plain_mse) = with(None);
    let (high, high_mse) = with(Some(1e12));
    let (low, low_mse) = with(Some(1e-9));
    assert!((plain - high).abs() < 1e-12 * plain.abs(), "γ = 1e12: {high}, plain {plain}");
    assert!(low < 1e-6 * plain, "γ = 1e-9: {low}, plain {plain}");
    assert_eq!((plain_mse, high_mse), (low_mse, low_mse));
}
