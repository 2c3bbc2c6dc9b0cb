//! Floating-point precision of a model's weights and compute, and mixed precision: the network
//! computed under autocast to bfloat16 (Micikevicius et al., "Mixed Precision Training", 2018,
//! arXiv:1710.03740), f32 master weights. tch 0.24 binds autocast only for CUDA and only in
//! libtorch's default dtype (fp16), so `csrc/precision.cpp` (compiled by `build.rs`) enters it
//! for any device type with a chosen dtype.
//!
//! Under autocast, convolutions, matrix products and attention run in bfloat16; the rest of a
//! step stays in f32 because it runs outside the autocast region: [`crate::classifier`] and
//! [`crate::denoiser`] cast the backbone's output back to the input's kind, so the cumsum head,
//! F, ε̂, the losses and the likelihood read-out are f32, and so is the CDM's input gradient
//! (autograd casts it back through the cast). docs/results.md §11 has the measurements.
use std::ffi::{c_char, c_int};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::device::take_message;
use crate::{Error, Result};

/// Floating-point precision of weights, data and compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F64,
    /// f32 weights and data; the network computed under bfloat16 autocast.
    Bf16,
}

impl Precision {
    /// The kind of the weights and data (f32 for bf16: the master weights).
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 | Precision::Bf16 => Kind::Float,
            Precision::F64 => Kind::Double,
        }
    }

    /// Runs `f` (a network's forward pass) under bfloat16 autocast on `device`'s type for
    /// [`Precision::Bf16`], as it is otherwise.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> Result<T> {
        match self {
            Precision::Bf16 => {
                let _guard = Autocast::enter(device, Kind::BFloat16)?;
                Ok(f())
            }
            Precision::F32 | Precision::F64 => Ok(f()),
        }
    }
}

extern "C" {
    fn cdm_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        was_enabled: *mut c_int,
        was_dtype: *mut c_int,
    ) -> *mut c_char;
    fn cdm_autocast_exit(device_type: c_int, was_enabled: c_int, was_dtype: c_int);
    fn cdm_autocast_enabled(device_type: c_int) -> c_int;
    fn cdm_set_tf32_matmul(allow: c_int);
    fn cdm_tf32_matmul() -> c_int;
}

/// c10::DeviceType of a device.
fn device_type(device: Device) -> c_int {
    match device {
        Device::Cuda(_) => 1,
        // Mps, Vulkan: not built into the libtorch this runs on; their autocast would be
        // refused by libtorch with a message.
        Device::Mps => 13,
        Device::Vulkan => 10,
        Device::Cpu => 0,
    }
}

/// c10::ScalarType of the kinds autocast computes in.
fn scalar_type(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Half => Ok(5),
        Kind::BFloat16 => Ok(15),
        other => Err(Error::Config(format!("autocast computes in Half or BFloat16, not {other:?}"))),
    }
}

/// An autocast region on one device type of the current thread (autocast is thread-local),
/// left when dropped, restoring the state it found; regions nest.
pub struct Autocast {
    device_type: c_int,
    was_enabled: c_int,
    was_dtype: c_int,
    /// The state is the entering thread's: the guard must be dropped there.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Enters autocast on `device`'s type, computing in `kind` (BFloat16 or Half).
    pub fn enter(device: Device, kind: Kind) -> Result<Self> {
        let (device_type, dtype) = (device_type(device), scalar_type(kind)?);
        let (mut was_enabled, mut was_dtype) = (0, 0);
        // SAFETY: the shim writes the two out-parameters before returning, and returns null or
        // a string it allocated, freed here.
        let error = unsafe { cdm_autocast_enter(device_type, dtype, &mut was_enabled, &mut was_dtype) };
        if let Some(message) = take_message(error) {
            return Err(Error::Config(format!("autocast to {kind:?} on {device:?}: {message}")));
        }
        Ok(Autocast { device_type, was_enabled, was_dtype, _not_send: std::marker::PhantomData })
    }

    /// Whether autocast is on for `device`'s type on this thread.
    pub fn is_enabled(device: Device) -> bool {
        // SAFETY: reads a thread-local flag.
        unsafe { cdm_autocast_enabled(device_type(device)) != 0 }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: undoes the matching enter on this thread (the guard is not Send).
        unsafe { cdm_autocast_exit(self.device_type, self.was_enabled, self.was_dtype) }
    }
}

/// Lets cuBLAS compute f32 matrix products in TF32 (a 10-bit mantissa), process-wide; off
/// by default, as in PyTorch. cuDNN's f32 convolutions may use TF32 already (libtorch's default).
pub fn set_tf32_matmul(allow: bool) {
    // SAFETY: sets a flag of libtorch's global context.
    unsafe { cdm_set_tf32_matmul(c_int::from(allow)) }
}

/// Whether f32 matrix products may use TF32.
pub fn tf32_matmul() -> bool {
    // SAFETY: reads a flag of libtorch's global context.
    unsafe { cdm_tf32_matmul() != 0 }
}
