//! Seeded random tensors, drawn in Rust so that results depend only on the seed: not on
//! libtorch's global generator, the batch size or the number of threads.
use std::ops::Range;

use rand::{rngs::StdRng, Rng as _, SeedableRng};
use rand_distr::StandardNormal;
use tch::{Kind, Tensor};

/// A seeded generator of random tensors (CPU; move the result where it is needed).
pub struct Rng(StdRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(StdRng::seed_from_u64(seed))
    }

    /// An independent stream `stream` of `seed` (per training step, per sample, ...), so a run
    /// resumed at step k draws exactly what an uninterrupted run draws there.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mix = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Rng(StdRng::seed_from_u64(mix.gen::<u64>() ^ stream))
    }

    /// The stream of training step `step`'s batch (rows, flips, dequantization, label
    /// dropout), apart from [`Rng::stream`]`(seed, step)`, which the step's loss draws from:
    /// a loader can then prepare batch k + 1 while step k runs, and a run resumed at any step
    /// still draws what an uninterrupted one does.
    pub fn batch_stream(seed: u64, step: u64) -> Self {
        Self::stream(seed ^ 0xBA7C_4E5D_0F1A_6B23, step)
    }

    /// Standard normal samples of the given shape.
    pub fn normal(&mut self, shape: &[i64], kind: Kind) -> Tensor {
        let mut v = Vec::new();
        self.extend_normal(&mut v, shape.iter().product::<i64>() as usize);
        Tensor::from_slice(&v).reshape(shape).to_kind(kind)
    }

    /// Appends `n` standard normal draws to `out`: the values [`Rng::normal`] would give, so
    /// several streams can fill one buffer and make one tensor.
    pub fn extend_normal(&mut self, out: &mut Vec<f64>, n: usize) {
        out.extend((0..n).map(|_| self.0.sample::<f64, _>(StandardNormal)));
    }

    /// Standard normal draws for rows `rows` of a tensor shaped `shape` ([N, ..]), each row from
    /// a stream of its own (of a seed drawn here): row i is the same whichever rows are asked
    /// for, so each rank of a data-parallel job draws its own rows of one global batch.
    pub fn normal_rows(&mut self, shape: &[i64], rows: Range<usize>, kind: Kind) -> Tensor {
        self.rows(shape, rows, kind, |rng, out, n| rng.extend_normal(out, n))
    }

    /// Uniform draws on [0, 1) for rows `rows` of a tensor shaped `shape`, as
    /// [`Rng::normal_rows`] draws normal ones.
    pub fn uniform_rows(&mut self, shape: &[i64], rows: Range<usize>, kind: Kind) -> Tensor {
        self.rows(shape, rows, kind, |rng, out, n| out.extend((0..n).map(|_| rng.0.gen::<f64>())))
    }

    fn rows(
        &mut self,
        shape: &[i64],
        rows: Range<usize>,
        kind: Kind,
        fill: impl Fn(&mut Rng, &mut Vec<f64>, usize),
    ) -> Tensor {
        let seed = self.0.gen::<u64>();
        let per_row = shape[1..].iter().product::<i64>() as usize;
        let mut values = Vec::with_capacity(rows.len() * per_row);
        let mut dims = shape.to_vec();
        dims[0] = rows.len() as i64;
        for row in rows {
            fill(&mut Rng::stream(seed, row as u64), &mut values, per_row);
        }
        Tensor::from_slice(&values).reshape(&dims).to_kind(kind)
    }

    /// Uniform samples on [0, 1).
    pub fn uniform(&mut self, shape: &[i64], kind: Kind) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.0.gen::<f64>()).collect();
        Tensor::from_slice(&v).reshape(shape).to_kind(kind)
    }

    /// `n` integers drawn uniformly from 0..upper, as an Int64 tensor [n].
    pub fn integers(&mut self, n: usize, upper: usize) -> Tensor {
        let v: Vec<i64> = (0..n).map(|_| self.0.gen_range(0..upper) as i64).collect();
        Tensor::from_slice(&v)
    }

    /// One uniform draw on [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.gen()
    }
}
