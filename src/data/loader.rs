//! Training batches, prepared off the training thread: random rows, left-right flips,
//! uniform dequantization, label dropout, and the conversion of 8-bit pixels to [-1, 1] in
//! the training precision on the device the batch goes to. A producer thread keeps a few
//! batches ahead in a bounded channel. Batch k is drawn from its own stream,
//! [`Rng::batch_stream`]`(seed, k)`, so what a step trains on does not depend on when it was
//! prepared: prefetched or not, a resumed run sees the batches an uninterrupted one does.
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use super::{pixels_to_unit, Dataset};
use crate::device::upload;
use crate::distributed::Shard;
use crate::likelihood::{spread_in_bins, spread_points_in_bins};
use crate::rng::Rng;
use crate::{Error, Result};

/// Batches the producer thread prepares ahead of the consumer.
pub const PREFETCH: usize = 4;

/// What a training batch is made of.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The rows of the global batch this process prepares (all of them, outside data
    /// parallelism); `shard.total` is the batch size.
    pub shard: Shard,
    /// Seed of the run; batch k is drawn from `Rng::batch_stream(seed, k)`.
    pub seed: u64,
    /// Flip each image left-right with probability 1/2.
    pub hflip: bool,
    /// Add uniform noise within each 8-bit pixel's bin: (k + u)/128 − 1.
    pub dequantize: bool,
    /// The null label of a conditional model (its number of classes), which replaces a label
    /// with probability `label_dropout`; `None`: the batch carries no labels.
    pub null_label: Option<i64>,
    pub label_dropout: f64,
    /// Kind of the points (the training precision).
    pub kind: Kind,
    /// Where the batch goes.
    pub device: Device,
}

/// One training batch on its device: points x0 [B, ..] and, for a conditional model, labels
/// [B] (Int64).
pub struct Batch {
    pub x0: Tensor,
    pub labels: Option<Tensor>,
}

/// `options.shard`'s rows of batch `step` of `data`, drawn from
/// `Rng::batch_stream(options.seed, step)`: the small draws (rows, flips, label dropout) for the
/// whole batch, the dequantization noise row by row ([`Rng::uniform_rows`]), so that a row is
/// the same whichever shard holds it.
pub fn batch(data: &Dataset, options: &BatchOptions, step: u64) -> Batch {
    let mut rng = Rng::batch_stream(options.seed, step);
    let shard = options.shard;
    let (mut x, labels) = data.batch(shard, &mut rng);
    let n = shard.len as i64;
    let coins = |rng: &mut Rng| shard.rows(&rng.uniform(&[shard.total as i64], Kind::Double));
    if options.hflip {
        let flip = coins(&mut rng).lt(0.5).reshape([n, 1, 1, 1]);
        x = x.flip([3]).where_self(&flip, &x);
    }
    let (kind, device) = (options.kind, options.device);
    let mut whole = x.size();
    whole[0] = shard.total as i64;
    let noise = options.dequantize.then(|| upload(&rng.uniform_rows(&whole, shard.range(), kind), device));
    let x0 = if x.kind() == Kind::Uint8 {
        // Bytes travel to the device (a quarter of Float's), and are converted there.
        let pixels = upload(&x, device).to_kind(kind);
        match noise {
            Some(u) => spread_in_bins(&pixels, &u),
            None => pixels_to_unit(&pixels, kind),
        }
    } else {
        let x = upload(&x.to_kind(kind), device);
        match noise {
            Some(u) => spread_points_in_bins(&x, &u),
            None => x,
        }
    };
    let labels = labels.zip(options.null_label).map(|(l, null)| {
        let drop = coins(&mut rng).lt(options.label_dropout);
        upload(&l.where_self(&drop.logical_not(), &Tensor::from(null)), device)
    });
    Batch { x0, labels }
}

/// The batches of a range of steps, in order: from a producer thread a few batches ahead
/// ([`PREFETCH`]) when the data can be shared with one, else drawn when asked for.
pub struct Batches {
    options: BatchOptions,
    next: u64,
    producer: Option<Producer>,
}

struct Producer {
    receiver: Receiver<Batch>,
    thread: JoinHandle<()>,
}

impl Batches {
    /// Batches `steps.start`, `steps.start + 1`, … of `data`.
    pub fn new(data: &Dataset, options: BatchOptions, steps: Range<u64>) -> Self {
        let producer = data.shared().map(|shared| {
            let (sender, receiver) = sync_channel(PREFETCH);
            let (options, steps) = (options.clone(), steps.clone());
            let thread = std::thread::spawn(move || {
                for step in steps {
                    // A closed channel: the consumer stopped early.
                    if sender.send(batch(&shared, &options, step)).is_err() {
                        break;
                    }
                }
            });
            Producer { receiver, thread }
        });
        Batches { options, next: steps.start, producer }
    }

    /// The next batch. `data` is the dataset given to [`Batches::new`], drawn from here when
    /// no producer thread holds it (a known density).
    pub fn next(&mut self, data: &Dataset) -> Result<Batch> {
        let step = self.next;
        self.next += 1;
        let Some(producer) = &self.producer else {
            return Ok(batch(data, &self.options, step));
        };
        if let Ok(batch) = producer.receiver.recv() {
            return Ok(batch);
        }
        // The producer is gone: its panic, if it had one, says why.
        let why = match self.producer.take().map(|p| p.thread.join()) {
            Some(Err(panic)) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "it panicked".into()),
            _ => "the steps it was given ran out".into(),
        };
        Err(Error::Data(format!("no training batch {step}: the batch producer stopped ({why})")))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Some(Producer { receiver, thread }) = self.producer.take() {
            // Closing the channel ends the producer's loop at its next send.
            drop(receiver);
            let _ = thread.join();
        }
    }
}

/// Images (points) per second the loader delivers alone: `num_batches` batches of `data`
/// drawn through [`Batches`] and waited for on their device, after one batch of warm-up.
pub fn throughput(data: &Dataset, options: &BatchOptions, num_batches: u64) -> Result<f64> {
    let mut batches = Batches::new(data, options.clone(), 0..num_batches + 1);
    let _ = batches.next(data)?;
    let start = std::time::Instant::now();
    for _ in 0..num_batches {
        let batch = batches.next(data)?;
        // A value read back waits for the device's queue.
        let _ = batch.x0.get(0).flatten(0, -1).get(0).double_value(&[]);
    }
    Ok((num_batches as usize * options.shard.len) as f64 / start.elapsed().as_secs_f64())
}
