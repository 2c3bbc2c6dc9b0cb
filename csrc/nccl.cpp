// c10d's NCCL process group for Rust, in a shared library of its own (libcdm_cuda.so) because
// ProcessGroupNCCL lives in libtorch_cuda, which the binary loads only on GPU hosts
// (src/device.rs), and because its header needs the CUDA toolkit's headers and nccl.h, which a
// CPU build host need not have. scripts/build-cuda.sh compiles it; src/distributed.rs loads it
// after libtorch_cuda and hands the backend it makes to csrc/distributed.cpp, which runs the
// collectives through c10d's common Backend interface, as it does Gloo's.
#define USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstring>
#include <exception>

extern "C" {

// An NCCL backend for `rank` of `world` on CUDA device `device`, meeting through `store` (a
// c10::intrusive_ptr<c10d::Store>*, borrowed). The communicator is made now, as PyTorch's
// init_process_group(device_id=...) does, so a rank without a working GPU fails here and not at
// its first collective. Returns a c10d::Backend* holding one reference (the caller reclaims it),
// or null with *error set to a strdup'ed message.
void* cdm_nccl_backend(void* store, int rank, int world, int device, int64_t timeout_ms, char** error) {
  try {
    auto& shared_store = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(shared_store, rank, world, options);
    at::Device cuda(at::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
    group->setBoundDeviceId(cuda);
    group->eagerConnectSingleDevice(cuda);
    c10d::Backend* backend = group.release();
    return backend;
  } catch (const c10::Error& e) {
    *error = strdup(e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    *error = strdup(e.what());
    return nullptr;
  }
}

}  // extern "C"
