//! A training step's loss and backward pass replayed from a CUDA graph. A small model's step is
//! bound by the host launching its kernels one at a time (the `make mnist` recipe keeps an H200
//! mostly idle: docs/results.md §12); a replay launches all the kernels of the forward pass, a
//! CDM's input gradient and the double backward with one call. The rest of the step stays as
//! it is, a few kernels each: the gradient norm and clip, Adam, the EMA, a data-parallel sum.
//!
//! The step's randomness is drawn on the host ([`LossDraw`]) and copied, with the batch, into
//! the recorded step's inputs, so a graphed run draws what an eager one does and trains alike.
use tch::{Device, Tensor};

use crate::cuda_graph::{Graph, EAGER_CALLS};
use crate::loss::{Loss, LossDraw, LossWeights};
use crate::model::Model;
use crate::optim::FlatVars;
use crate::Result;

/// The recorded step: its inputs, which a replay reads, and its loss, which it writes.
struct Captured {
    graph: Graph,
    x0: Tensor,
    labels: Option<Tensor>,
    draw: LossDraw,
    loss: Loss,
}

enum State {
    /// Steps run as they are so far: the first [`EAGER_CALLS`] make what libtorch makes lazily
    /// (cuBLAS and cuDNN handles, the schedule's tables on the device) before a capture.
    Eager(usize),
    Captured(Box<Captured>),
    /// Every step runs as it is: not a CUDA device, or a capture failed (logged once).
    Off,
}

/// What one step's loss is computed from: the batch, its labels, the step's draw of levels and
/// noise, and the loss's weights.
pub struct StepInputs<'a> {
    pub x0: &'a Tensor,
    pub labels: Option<&'a Tensor>,
    pub draw: &'a LossDraw,
    pub weights: &'a LossWeights,
}

/// Training steps on one device, replayed from one CUDA graph after the first few.
pub struct GraphedSteps {
    device: Device,
    state: State,
}

impl GraphedSteps {
    /// Steps on `device`; anywhere but a CUDA device they all run as they are.
    pub fn new(device: Device) -> Self {
        GraphedSteps { device, state: if device.is_cuda() { State::Eager(0) } else { State::Off } }
    }

    /// Whether steps are replayed from a graph.
    pub fn is_captured(&self) -> bool {
        matches!(self.state, State::Captured(_))
    }

    /// The loss of `model` on `inputs`, its gradients in `params`' buffer (zeroed first). A
    /// replay's loss tensors are the graph's own: the next step rewrites them, so read them
    /// before it.
    pub fn step(&mut self, model: &Model, params: &mut FlatVars, inputs: &StepInputs) -> Result<Loss> {
        match &mut self.state {
            State::Off => return eager_step(model, params, inputs),
            State::Eager(runs) if *runs < EAGER_CALLS => {
                *runs += 1;
                return eager_step(model, params, inputs);
            }
            State::Eager(_) => match capture(self.device, model, params, inputs) {
                Ok(captured) => {
                    tracing::info!("training steps replay from a CUDA graph from here on");
                    self.state = State::Captured(Box::new(captured));
                }
                Err(why) => {
                    tracing::warn!("training steps run without CUDA graphs: {why}");
                    self.state = State::Off;
                    return eager_step(model, params, inputs);
                }
            },
            State::Captured(_) => {}
        }
        let State::Captured(captured) = &self.state else { unreachable!("captured above") };
        // A batch of another shape (none in a run, whose batch size is fixed) runs as it is,
        // rather than being broadcast into the recorded one.
        if inputs.x0.size() != captured.x0.size() || inputs.labels.is_some() != captured.labels.is_some() {
            return eager_step(model, params, inputs);
        }
        captured.x0.shallow_clone().f_copy_(inputs.x0)?;
        if let (Some(into), Some(from)) = (&captured.labels, inputs.labels) {
            into.shallow_clone().f_copy_(from)?;
        }
        captured.draw.copy_from(inputs.draw)?;
        captured.graph.replay()?;
        let loss = &captured.loss;
        Ok(Loss {
            total: loss.total.shallow_clone(),
            ce: loss.ce.as_ref().map(Tensor::shallow_clone),
            mse: loss.mse.shallow_clone(),
            cdl: None,
        })
    }
}

/// One step as it is: the gradients zeroed, the loss, its backward pass.
fn eager_step(model: &Model, params: &mut FlatVars, inputs: &StepInputs) -> Result<Loss> {
    params.zero_grads();
    let loss = model.loss_given(inputs.x0, inputs.labels, inputs.draw, inputs.weights)?;
    loss.total.f_backward()?;
    Ok(loss)
}

/// Records [`eager_step`] on copies of `inputs`; nothing is computed until a replay.
fn capture(device: Device, model: &Model, params: &mut FlatVars, inputs: &StepInputs) -> Result<Captured> {
    let (x0, labels, draw) = (inputs.x0.copy(), inputs.labels.map(Tensor::copy), inputs.draw.map(Tensor::copy));
    let copies = StepInputs { x0: &x0, labels: labels.as_ref(), draw: &draw, weights: inputs.weights };
    let (graph, loss) = Graph::capture(device, || eager_step(model, params, &copies))?;
    Ok(Captured { graph, x0, labels, draw, loss })
}
