// What tch 0.24 does not bind of libtorch's mixed precision: autocast for a given device type
// and dtype (tch::autocast only switches CUDA autocast on, in libtorch's default fp16), and
// TF32 for float32 matrix products. Every symbol used lives in libtorch_cpu (the autocast
// state is thread-local there; the TF32 switch is a flag of the global context), so a binary
// built with this file still starts on a host without CUDA. Compiled by build.rs.
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>

#include <cstring>
#include <exception>

namespace {
// A copy of an exception's message for Rust to read and free with cdm_free_error.
char* error_copy(const std::exception& e) { return strdup(e.what()); }
}  // namespace

extern "C" {

// Enters an autocast region on `device_type` (c10::DeviceType: 0 CPU, 1 CUDA) computing in
// `dtype` (c10::ScalarType); writes the state to restore into *was_enabled and *was_dtype.
// Returns null, or an error message.
char* cdm_autocast_enter(int device_type, int dtype, int* was_enabled, int* was_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    *was_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception& e) {
    return error_copy(e);
  }
}

// Leaves the region cdm_autocast_enter opened, restoring the state it saved; the outermost
// region also drops autocast's cache of weights cast to the lower precision (they would
// otherwise outlive the optimiser's update of the f32 weights).
void cdm_autocast_exit(int device_type, int was_enabled, int was_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, was_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(was_dtype));
  } catch (const std::exception&) {
  }
}

// Whether autocast is on for `device_type` on this thread.
int cdm_autocast_enabled(int device_type) {
  return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device_type)) ? 1 : 0;
}

// Lets cuBLAS compute float32 matrix products in TF32 (PyTorch's
// torch.backends.cuda.matmul.allow_tf32); cuDNN convolutions already may by default.
void cdm_set_tf32_matmul(int allow) { at::globalContext().setAllowTF32CuBLAS(allow != 0); }

// Whether float32 matrix products may use TF32.
int cdm_tf32_matmul() { return at::globalContext().allowTF32CuBLAS() ? 1 : 0; }

void cdm_free_error(char* message) { free(message); }
}
