// libtorch's inference mode, which tch 0.24 does not bind: c10::InferenceMode is a RAII guard
// over thread-local dispatch state, held here on the heap so that Rust can scope it. Its
// symbols live in libtorch_cpu. Compiled by build.rs.
#include <c10/core/InferenceMode.h>

#include <exception>

extern "C" {

// Enters inference mode on this thread; null if libtorch refused. Pair with
// cdm_inference_mode_exit on the same thread, innermost first.
void* cdm_inference_mode_enter() {
  try {
    return new c10::InferenceMode(true);
  } catch (const std::exception&) {
    return nullptr;
  }
}

// Restores the state cdm_inference_mode_enter found.
void cdm_inference_mode_exit(void* guard) { delete static_cast<c10::InferenceMode*>(guard); }

}  // extern "C"
