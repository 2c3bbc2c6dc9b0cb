//! How points pass through a model: in chunks, cast to the weights' kind and moved to their
//! device, with a progress callback; shared by evaluation, likelihood and sampling.
use tch::{Device, Kind, Tensor};

use crate::distributed::ProcessGroup;
use crate::{Error, Result};

/// How points pass through a model: in chunks of `batch_size`, cast to the weights' kind and
/// moved to their device, so an evaluation of any size fits in memory.
#[derive(Clone, Copy)]
pub struct Batches<'a> {
    /// Points per forward pass (at least 1).
    pub batch_size: usize,
    /// Kind of the model's weights.
    pub kind: Kind,
    /// Device of the model's weights.
    pub device: Device,
    /// Called after each chunk with (done, in all), for a progress bar: points for an
    /// evaluation, steps of all batches for sampling.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Index of the first point given within a larger set (a rank's share of it), so that the
    /// random draws made per point or per chunk are those of the whole set: 0 for a whole set.
    pub first_row: usize,
    /// Ranks of a job that share each network call of a sampler (each computes whole window
    /// slots of it, the results gathered): every rank runs the same sampler in step.
    pub group: Option<&'a ProcessGroup>,
    /// Samplers replay their network calls from CUDA graphs on a CUDA device
    /// ([`crate::cuda_graph::GraphedModel`]).
    pub graphs: bool,
}

impl<'a> Batches<'a> {
    /// Chunks of `batch_size` for weights of `options` = (kind, device), without progress.
    pub fn new(batch_size: usize, options: (Kind, Device)) -> Self {
        Batches {
            batch_size,
            kind: options.0,
            device: options.1,
            progress: None,
            first_row: 0,
            group: None,
            graphs: false,
        }
    }

    /// Runs `f(chunk, start)` over chunks of `x` ([N, ..], N ≥ 1) and concatenates its results
    /// on the CPU; `start` counts from `first_row`.
    pub fn map(&self, x: &Tensor, mut f: impl FnMut(&Tensor, i64) -> Result<Tensor>) -> Result<Tensor> {
        let n = x.size()[0];
        if n == 0 {
            return Err(Error::Data("no points to evaluate".into()));
        }
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (self.batch_size.max(1) as i64).min(n - start);
            let chunk = x.narrow(0, start, len).to_kind(self.kind).to_device(self.device);
            parts.push(f(&chunk, self.first_row as i64 + start)?.to_device(Device::Cpu));
            start += len;
            if let Some(progress) = self.progress {
                progress(start as u64, n as u64);
            }
        }
        Ok(Tensor::cat(&parts, 0))
    }
}
