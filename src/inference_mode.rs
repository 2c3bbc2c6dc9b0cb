//! libtorch's inference mode (`c10::InferenceMode`, `torch.inference_mode` in Python), which
//! tch 0.24 does not bind: inside it, tensor operations skip autograd's dispatch layers and
//! version counters, 6-18% of a sampler iteration's own time on a CPU (docs/results.md §13.2). A
//! sampler's own arithmetic, many operations on a few numbers each, is where that counts.
//!
//! Tensors allocated inside are inference tensors: outside the mode they may be read and
//! viewed, but not modified in place nor saved for a backward pass. The samplers therefore
//! keep their state buffers, the network call (a classifier's ε̂ needs autograd) and whatever
//! they hand to a caller outside it.
use std::ffi::c_void;
use std::marker::PhantomData;

extern "C" {
    fn cdm_inference_mode_enter() -> *mut c_void;
    fn cdm_inference_mode_exit(guard: *mut c_void);
}

/// Inference mode on this thread until dropped. Not `Send`: the mode is thread-local, and
/// guards must be dropped innermost first.
pub struct InferenceMode {
    guard: *mut c_void,
    _thread_bound: PhantomData<*mut ()>,
}

impl InferenceMode {
    /// Enters inference mode. Should libtorch refuse, the guard does nothing: operations then
    /// run as they would without it, only slower.
    pub fn enter() -> Self {
        // SAFETY: the shim returns a heap guard or null; `Drop` frees it on this thread.
        InferenceMode { guard: unsafe { cdm_inference_mode_enter() }, _thread_bound: PhantomData }
    }
}

impl Drop for InferenceMode {
    fn drop(&mut self) {
        if !self.guard.is_null() {
            // SAFETY: a guard from `cdm_inference_mode_enter`, freed once.
            unsafe { cdm_inference_mode_exit(self.guard) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn tensors_made_inside_are_inference_tensors_and_autograd_works_again_outside() {
        let w = Tensor::ones([3], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let mut inside = {
            let _mode = InferenceMode::enter();
            &w * 2.0
        };
        assert!(!inside.requires_grad(), "an operation inside inference mode records no graph");
        // What tells inference mode from no_grad: its tensors refuse in-place updates outside.
        assert!(inside.f_add_(&w.detach()).is_err(), "an inference tensor was modified outside inference mode");
        let outside = (&w * 2.0).sum(Kind::Double);
        outside.backward();
        assert_eq!(Vec::<f64>::try_from(w.grad()).unwrap(), vec![2.0; 3]);
    }
}
