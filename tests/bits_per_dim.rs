//! Bits/dim of 8-bit images, against hand computations on densities with exact answers.
mod common;

use cdm::data::loader::{self, BatchOptions};
use cdm::data::Dataset;
use cdm::likelihood::{bits_per_dim, bits_per_dim_8bit, dequantize, Dequantization};
use cdm::model::ModelKind;
use cdm::nets::MlpConfig;
use cdm::rng::Rng;
use cdm::train::{RunConfig, TrainConfig, Trainer};
use common::{assert_close, mlp_config};
use tch::{Device, Kind, Tensor};

#[test]
fn uniform_8bit_noise_costs_8_bits() {
    // All 256^D images equally likely: dequantized, x is uniform on [-1, 1)^D, log p = -D ln 2,
    // and the bound is exactly 8 bits per dimension.
    assert_close(bits_per_dim_8bit(-(2f64.ln())), 8.0, 1e-12, "uniform 8-bit");
    // A point mass on one grey level per pixel spread over its bin: density 128 per dimension.
    assert_close(bits_per_dim_8bit(128f64.ln()), 0.0, 1e-12, "one level");
    assert_close(bits_per_dim(-1.0), 1.0 / std::f64::consts::LN_2, 1e-12, "continuous");
}

#[test]
fn dequantization_spreads_each_level_over_its_bin() {
    let k = Tensor::from_slice(&[0.0, 1.0, 127.0, 254.0, 255.0]).reshape([1, 1, 1, 5]);
    let x = &k / 127.5 - 1.0;
    let mut rng = Rng::new(3);
    for _ in 0..20 {
        let deq = dequantize(&x, Dequantization::Uniform, &mut rng);
        let lo = &k / 128.0 - 1.0;
        let hi = (&k + 1.0) / 128.0 - 1.0;
        assert!(
            deq.ge_tensor(&lo).all().int64_value(&[]) == 1 && deq.lt_tensor(&hi).all().int64_value(&[]) == 1,
            "{deq:?}"
        );
    }
    assert_eq!(dequantize(&x, Dequantization::Paper, &mut rng).double_value(&[0, 0, 0, 4]), 1.0);
    // The mean over many draws is the bin's centre.
    let many = x.repeat([20_000, 1, 1, 1]);
    let mean = dequantize(&many, Dequantization::Uniform, &mut rng).mean_dim(0, false, Kind::Double);
    let centre = (&k + 0.5) / 128.0 - 1.0;
    assert!((mean - centre.squeeze_dim(0)).abs().max().double_value(&[]) < 2e-4);
}

#[test]
fn training_batches_are_dequantized_when_asked() {
    // Eight copies of one image, so that whichever rows a batch draws, its pixels are k.
    let k = (Rng::new(4).uniform(&[1, 1, 4, 4], Kind::Double) * 256.0).floor().repeat([8, 1, 1, 1]);
    let data = Dataset::Images { pixels: k.to_kind(Kind::Uint8), labels: None };
    let plain = BatchOptions {
        shard: cdm::distributed::Shard::whole(8),
        seed: 5,
        hflip: false,
        dequantize: false,
        null_label: None,
        label_dropout: 0.0,
        kind: Kind::Double,
        device: Device::Cpu,
    };
    assert_eq!(loader::batch(&data, &plain, 0).x0, &k / 127.5 - 1.0, "no augmentation asked");
    let asked = BatchOptions { dequantize: true, ..plain };
    // Each pixel lands in its own bin, (k + u)/128 − 1, at an offset u ∈ [0, 1) spread over it.
    let u = (loader::batch(&data, &asked, 0).x0 + 1.0) * 128.0 - &k;
    let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
    assert!(lo >= -1e-9 && hi < 1.0, "offsets in [{lo}, {hi}]");
    assert_close(u.mean(Kind::Double).double_value(&[]), 0.5, 0.1, "mean offset (128 pixels)");
    let train = TrainConfig { dequantize: true, ..TrainConfig::default() };
    // Data that are not 8-bit images are refused, naming the setting.
    let config = RunConfig {
        data: "gmm2d".into(),
        model: mlp_config(ModelKind::Ddm, 10, MlpConfig { hidden: 8, blocks: 1, ..MlpConfig::default() }, &[2]),
        train,
    };
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::open(dir.path(), config, Device::Cpu).err().expect("gmm2d is not 8-bit");
    assert!(err.to_string().contains("dequantize"), "{err}");
}
