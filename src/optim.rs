//! The optimiser and the evaluation weights: Adam (Kingma & Ba, "Adam: A Method for
//! Stochastic Optimization", 2015, arXiv:1412.6980, Algorithm 1) and an exponential moving
//! average of the weights, each a handful of kernels over all parameters at once.
//!
//! [`FlatVars`] moves a network's trained variables into one flat buffer, every variable
//! becoming a view of its slice, and their gradients into another. Gradient clipping, both
//! moments, the update and the EMA then cost the same few kernels for a network of ten tensors
//! or of three hundred, where a loop over the variables costs about ten per tensor (kernel
//! launches on a GPU, libtorch's per-operation overhead on a CPU). tch 0.24 binds neither the
//! `_foreach_*` operations nor a fused Adam, so this is the way to one kernel per step of the
//! algorithm.
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Elements between the starts of two variables' slices: 64 bytes in f32.
const ALIGN: i64 = 16;

/// Named variables of one kind and device, moved into one contiguous buffer [N] (and, with
/// [`FlatVars::track_grads`], their gradients into another), in a fixed order.
pub struct FlatVars {
    names: Vec<String>,
    /// The variables, now views of `values`.
    vars: Vec<Tensor>,
    /// Variable i starts at `values[offsets[i]]`; `offsets[i + 1]` is past it and its padding.
    offsets: Vec<i64>,
    values: Tensor,
    grads: Option<Tensor>,
}

impl FlatVars {
    /// Copies `vars` into one buffer and makes each a view of its slice, so that whatever
    /// else holds them (a VarStore, a network's layers) reads and writes the buffer. The
    /// variables must share one kind and device, and nothing may re-allocate them afterwards
    /// (`VarStore::set_kind` would: call it before).
    pub fn new(vars: Vec<(String, Tensor)>) -> Result<Self> {
        let Some((_, first)) = vars.first() else { return Err(Error::Config("no variables to optimise".into())) };
        let (kind, device) = (first.kind(), first.device());
        if let Some((name, _)) = vars.iter().find(|(_, v)| v.kind() != kind || v.device() != device) {
            return Err(Error::Config(format!("variable '{name}' differs from the others in kind or device")));
        }
        // Each variable starts on a 64-byte boundary (or 128 in f64), as a tensor of its own
        // would: vectorised kernels and oneDNN's weight reorders may otherwise slow down on a
        // view at an odd offset. The gaps stay zero under Adam (zero gradient, zero update).
        let mut offsets = vec![0i64];
        for (_, v) in &vars {
            let end = offsets[offsets.len() - 1] + v.numel() as i64;
            offsets.push((end + ALIGN - 1) / ALIGN * ALIGN);
        }
        let values = Tensor::zeros([offsets[vars.len()]], (kind, device));
        let (names, vars): (Vec<String>, Vec<Tensor>) = vars.into_iter().unzip();
        let flat = FlatVars { names, vars, offsets, values, grads: None };
        tch::no_grad(|| {
            for (i, var) in flat.vars.iter().enumerate() {
                let slice = flat.slice(&flat.values, i);
                slice.shallow_clone().copy_(var);
                var.shallow_clone().set_data(&slice);
            }
        });
        Ok(flat)
    }

    /// Gives every variable a gradient that is a view of one flat buffer, zeroed. Autograd adds
    /// into a defined gradient in place (outside `create_graph`), so after `backward` the
    /// buffer holds the whole gradient.
    pub fn track_grads(mut self) -> Self {
        let grads = self.values.zeros_like();
        // A gradient must exist before it can be re-pointed: one backward pass of zero.
        tch::with_grad(|| {
            let zero = self.vars.iter().map(|v| v.sum(v.kind())).fold(Tensor::from(0.0), |a, b| a + b) * 0.0;
            zero.backward();
        });
        for (i, var) in self.vars.iter().enumerate() {
            var.grad().set_data(&self.slice(&grads, i));
        }
        self.grads = Some(grads);
        self
    }

    /// The variables' names, in buffer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// All values: [N].
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// Variable `i`'s slice of a buffer laid out like the values, shaped like the variable.
    pub fn slice(&self, flat: &Tensor, i: usize) -> Tensor {
        let size = self.vars[i].size();
        flat.narrow(0, self.offsets[i], size.iter().product()).view(size.as_slice())
    }

    /// Sets every gradient to zero (one kernel).
    pub fn zero_grads(&mut self) {
        if let Some(grads) = &mut self.grads {
            let _ = grads.zero_();
        }
    }

    /// All gradients after a backward pass: [N]. Should autograd ever have given a variable a
    /// new gradient tensor rather than adding into its view (it does only outside the cases
    /// `track_grads` sets up), that gradient is copied into the buffer and re-pointed, so the
    /// buffer is never stale.
    pub fn grads(&self) -> Result<&Tensor> {
        let grads = self.grads.as_ref().ok_or_else(|| Error::Config("gradients are not tracked".into()))?;
        tch::no_grad(|| {
            for (i, var) in self.vars.iter().enumerate() {
                let (mut grad, slice) = (var.grad(), self.slice(grads, i));
                // Undefined only if something outside reset it: its slice, zeroed, stands for it.
                if grad.defined() && grad.data_ptr() != slice.data_ptr() {
                    slice.shallow_clone().copy_(&grad);
                    grad.set_data(&slice);
                }
            }
        });
        Ok(grads)
    }

    /// The name of the first variable with a non-finite value, if any; one kernel and one
    /// host read when all are finite.
    pub fn first_non_finite(&self) -> Option<&str> {
        if self.values.isfinite().all().int64_value(&[]) == 1 {
            return None;
        }
        (0..self.vars.len())
            .find(|&i| self.slice(&self.values, i).isfinite().all().int64_value(&[]) == 0)
            .map(|i| self.names[i].as_str())
    }
}

/// Adam's moments, each one buffer laid out like a [`FlatVars`]'s values.
pub struct Adam {
    /// First moment m: [N].
    pub m: Tensor,
    /// Second moment v: [N].
    pub v: Tensor,
    /// Working memory for the update, kept between steps: a fresh buffer of N values per
    /// intermediate is, above glibc's 32 MB mmap threshold, new pages that the kernel faults in
    /// and zeroes on every step (a fifth of a CPU training step at CIFAR-10's 35.7 M weights:
    /// docs/results.md §3.3).
    scratch: Tensor,
}

/// β₁ and β₂ (the paper's defaults).
pub const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
/// ε in the denominator (the paper's default).
pub const ADAM_EPS: f64 = 1e-8;

impl Adam {
    /// Zero moments for `params`.
    pub fn new(params: &FlatVars) -> Self {
        Adam { m: params.values.zeros_like(), v: params.values.zeros_like(), scratch: params.values.zeros_like() }
    }

    /// One update (Algorithm 1) with step number `k` (1-based, for the bias corrections), the
    /// gradients scaled by `scale` (clipping; a device scalar, so that no value is read back): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
    /// θ ← θ − lr·(m/(1−β₁ᵏ)) / (√(v/(1−β₂ᵏ)) + ε).
    pub fn update(&mut self, params: &FlatVars, lr: f64, k: u64, scale: Option<&Tensor>) -> Result<()> {
        let (b1, b2) = ADAM_BETAS;
        let (c1, c2) = (1.0 - b1.powi(k as i32), 1.0 - b2.powi(k as i32));
        let grads = params.grads()?;
        // Every operation writes in place into a buffer that already exists: no temporary of N
        // values (libtorch's `mul.Scalar_out` and `div.Scalar_out` would allocate one each, as
        // they compute the functional result and copy it).
        tch::no_grad(|| {
            let s = &mut self.scratch;
            s.copy_(grads);
            if let Some(scale) = scale {
                let _ = s.g_mul_(scale);
            }
            let _ = self.m.lerp_(s, 1.0 - b1);
            let _ = s.square_();
            let _ = self.v.lerp_(s, 1.0 - b2);
            s.copy_(&self.v);
            let _ = s
                .g_div_scalar_(c2)
                .sqrt_()
                .g_add_scalar_(ADAM_EPS)
                .reciprocal_()
                .g_mul_(&self.m)
                .g_mul_scalar_(lr / c1);
            let _ = params.values.shallow_clone().g_sub_(s);
        });
        Ok(())
    }
}

/// The global L2 norm of all gradients: a 0-dim f64 tensor, so the caller decides when to read
/// it (each read is a host sync on a GPU). Reduced in the gradients' own kind, which on a CPU
/// accumulates f32 in f64 anyway; asking for f64 would first copy all N gradients to f64.
pub fn grad_norm(params: &FlatVars) -> Result<Tensor> {
    Ok(params.grads()?.norm().to_kind(Kind::Double))
}

/// Moves the EMA weights `ema` towards `params` (laid out alike): e ← e + (1 − decay)(θ − e),
/// one kernel.
pub fn ema_update(ema: &FlatVars, params: &FlatVars, decay: f64) {
    tch::no_grad(|| {
        let _ = ema.values.shallow_clone().lerp_(&params.values, 1.0 - decay);
    });
}
