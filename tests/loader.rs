//! The training-batch loader: batches from the prefetching thread equal those drawn on the
//! spot, an image set held as bytes gives the batches of the same images held as Double
//! points, and a loader dropped early stops its thread.
use cdm::data::loader::{batch, BatchOptions, Batches};
use cdm::data::{pixels_to_unit, Dataset};
use cdm::distributed::Shard;
use cdm::rng::Rng;
use tch::{Device, Kind, Tensor};

fn options(kind: Kind) -> BatchOptions {
    BatchOptions {
        shard: Shard::whole(16),
        seed: 7,
        hflip: true,
        dequantize: true,
        null_label: Some(10),
        label_dropout: 0.3,
        kind,
        device: Device::Cpu,
    }
}

/// 40 random 8-bit images of 3×4×5, labels 0..=9.
fn pixels() -> (Tensor, Tensor) {
    let pixels = (Rng::new(1).uniform(&[40, 3, 4, 5], Kind::Double) * 256.0).floor().to_kind(Kind::Uint8);
    (pixels, Tensor::arange(40, (Kind::Int64, Device::Cpu)).remainder(10))
}

#[test]
fn prefetched_batches_are_the_batches_drawn_on_the_spot() {
    let (x, labels) = pixels();
    let data = Dataset::Images { pixels: x, labels: Some(labels) };
    let opts = options(Kind::Float);
    let mut batches = Batches::new(&data, opts.clone(), 3..10);
    for step in 3..10 {
        let (prefetched, direct) = (batches.next(&data).unwrap(), batch(&data, &opts, step));
        assert_eq!(prefetched.x0, direct.x0, "step {step}");
        assert_eq!(prefetched.labels.unwrap(), direct.labels.unwrap(), "step {step}");
        assert_eq!((direct.x0.kind(), direct.x0.size()), (Kind::Float, vec![16, 3, 4, 5]));
    }
    assert!(batches.next(&data).is_err(), "the range is spent");
    // Batches differ from step to step, and label dropout puts the null label in.
    assert_ne!(batch(&data, &opts, 0).x0, batch(&data, &opts, 1).x0);
    let dropped = (0..20).map(|k| batch(&data, &opts, k).labels.unwrap().eq(10).sum(Kind::Int64).int64_value(&[]));
    assert!(dropped.sum::<i64>() > 0);
    // A known density is drawn on the spot, with the same streams.
    let known = Dataset::open("gmm2d").unwrap();
    let points = BatchOptions { null_label: None, hflip: false, dequantize: false, ..opts };
    let mut batches = Batches::new(&known, points.clone(), 0..2);
    assert_eq!(batches.next(&known).unwrap().x0, batch(&known, &points, 0).x0);
}

#[test]
fn bytes_give_the_batches_of_the_same_images_as_points() {
    let (x, labels) = pixels();
    let points = Dataset::Points { x: pixels_to_unit(&x, Kind::Double), labels: Some(labels.shallow_clone()) };
    let bytes = Dataset::Images { pixels: x, labels: Some(labels) };
    let opts = options(Kind::Double);
    for step in 0..4 {
        let (a, b) = (batch(&points, &opts, step), batch(&bytes, &opts, step));
        assert_eq!(a.x0, b.x0, "step {step}");
        assert_eq!(a.labels.unwrap(), b.labels.unwrap());
    }
    // Without dequantization, the values are exactly k/127.5 − 1 (here flipped or not).
    let plain = BatchOptions { dequantize: false, ..opts };
    let x0 = batch(&bytes, &plain, 0).x0;
    let k = (&x0 + 1.0) * 127.5;
    assert!((&k - k.round()).abs().max().double_value(&[]) < 1e-9);
    assert!(bytes.is_8bit() && points.is_8bit());
    assert_eq!(bytes.eval_points(0, 0), points.eval_points(0, 0));
    // The first rows alone, converted alike; a count past the set gives the whole set.
    assert_eq!(bytes.first_points(5, 0), points.eval_points(0, 0).narrow(0, 0, 5));
    assert_eq!(bytes.first_points(100, 0).size()[0], 40);
}

#[test]
fn a_loader_dropped_early_stops_its_thread() {
    let (x, _) = pixels();
    let data = Dataset::Images { pixels: x, labels: None };
    let started = std::time::Instant::now();
    let mut batches = Batches::new(&data, BatchOptions { null_label: None, ..options(Kind::Float) }, 0..1_000_000);
    assert!(batches.next(&data).unwrap().labels.is_none());
    drop(batches);
    assert!(started.elapsed().as_secs() < 10, "the drop joined the thread without drawing every batch");
}

#[test]
fn the_shards_of_a_batch_are_its_rows() {
    let (x, labels) = pixels();
    let images = Dataset::Images { pixels: x, labels: Some(labels) };
    let known = Dataset::open("gmm2d").unwrap();
    for (data, opts) in [
        (&images, options(Kind::Float)),
        (&known, BatchOptions { null_label: None, hflip: false, dequantize: false, ..options(Kind::Float) }),
    ] {
        let whole = batch(data, &opts, 5);
        let parts: Vec<_> = (0..4)
            .map(|rank| batch(data, &BatchOptions { shard: Shard::of(16, rank, 4).unwrap(), ..opts.clone() }, 5))
            .collect();
        let x0: Vec<_> = parts.iter().map(|b| b.x0.shallow_clone()).collect();
        assert_eq!(Tensor::cat(&x0, 0), whole.x0, "rows, flips and dequantization noise follow the row");
        if let Some(labels) = whole.labels {
            let parts: Vec<_> = parts.iter().map(|b| b.labels.as_ref().unwrap().shallow_clone()).collect();
            assert_eq!(Tensor::cat(&parts, 0), labels, "label dropout follows the row");
        }
    }
}
