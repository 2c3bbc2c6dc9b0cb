//! The UNet as both model kinds: output shapes, and parameter counts against the published
//! sizes (the DDPM CIFAR-10 network has 35.7 M parameters; Ho et al. 2020, appendix B).
use cdm::model::{Model, ModelConfig, ModelKind};
use cdm::nets::{BackboneConfig, UnetConfig};
use cdm::rng::Rng;
use cdm::schedule::ScheduleConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn build(kind: ModelKind, unet: UnetConfig, shape: Vec<i64>) -> (VarStore, Model) {
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        kind,
        schedule: ScheduleConfig::default(),
        backbone: BackboneConfig::Unet(unet),
        data_shape: shape,
        gaussian_base: false,
        base_per_class: false,
    };
    let model = Model::new(&vs.root(), &cfg).unwrap();
    (vs, model)
}

fn parameters(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|v| v.numel() as i64).sum()
}

#[test]
fn ddpm_cifar10_network_has_its_published_size() {
    let (vs, _) = build(ModelKind::Ddm, UnetConfig::cifar10(), vec![3, 32, 32]);
    let n = parameters(&vs);
    assert!((35_650_000..35_800_000).contains(&n), "{n} parameters, DDPM reports 35.7 M");
}

#[test]
fn both_kinds_give_the_right_outputs() {
    let x = Rng::new(0).normal(&[2, 1, 28, 28], Kind::Float);
    let t = Tensor::from_slice(&[3i64, 700]);
    for kind in [ModelKind::Cdm, ModelKind::Ddm] {
        let (vs, model) =
            build(kind, UnetConfig { attention_resolutions: vec![14], ..UnetConfig::tiny() }, vec![1, 28, 28]);
        let eps = model.eps(&x, &t, None).unwrap();
        assert_eq!(eps.size(), [2, 1, 28, 28], "{kind:?}");
        // Detached, or a sampler's loop would keep every step's graph alive.
        assert!(!eps.requires_grad(), "{kind:?}: ε̂ carries a graph");
        // Zero-initialised heads: the CDM starts at p_t = N(0, I) (ε̂ = √(1-ᾱ_t)·x_t), the DDM at ε̂ = 0.
        let expected = match kind {
            ModelKind::Cdm => model.schedule().coefficients(&t, &x).1 * &x,
            ModelKind::Ddm => x.zeros_like(),
        };
        let off = (&eps - expected).abs().max().double_value(&[]);
        assert!(off < 1e-5, "{kind:?}: off by {off} at initialisation");
        let tiny = parameters(&vs);
        assert!((900_000..1_300_000).contains(&tiny), "{kind:?} tiny UNet has {tiny} parameters");
    }
}

#[test]
fn odd_sizes_and_encoders_are_refused() {
    let vs = VarStore::new(Device::Cpu);
    let cfg = |backbone, kind, shape| ModelConfig {
        kind,
        schedule: ScheduleConfig::default(),
        backbone,
        data_shape: shape,
        gaussian_base: false,
        base_per_class: false,
    };
    let err = Model::new(&vs.root(), &cfg(BackboneConfig::Unet(UnetConfig::tiny()), ModelKind::Cdm, vec![1, 30, 30]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot be halved 2 times"), "{err}");
    let err = Model::new(&vs.root(), &cfg(BackboneConfig::ConvNet(Default::default()), ModelKind::Ddm, vec![1, 8, 8]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("convnet is an encoder"), "{err}");
}

#[test]
fn the_nonlinear_head_starts_at_the_prior_and_has_its_size() {
    let x = Rng::new(1).normal(&[2, 1, 28, 28], Kind::Float);
    let t = Tensor::from_slice(&[5i64, 900]);
    let (paper, _) = build(ModelKind::Cdm, UnetConfig::tiny(), vec![1, 28, 28]);
    let (vs, model) = build(ModelKind::Cdm, UnetConfig { head_channels: 64, ..UnetConfig::tiny() }, vec![1, 28, 28]);
    let eps = model.eps(&x, &t, None).unwrap();
    let off = (&eps - model.schedule().coefficients(&t, &x).1 * &x).abs().max().double_value(&[]);
    assert!(off < 1e-5, "off by {off} at initialisation");
    // conv 3×3 (C → 2C) and linear (2C → T+2) become conv 1×1 (C → K) and linear (K → T+2).
    let (c, k, classes) = (32i64, 64i64, 1002i64);
    let swapped = (c * k + k + k * classes + classes) - (9 * c * 2 * c + 2 * c + 2 * c * classes + classes);
    assert_eq!(parameters(&vs) - parameters(&paper), swapped);
}
