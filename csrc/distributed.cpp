// PyTorch's own collective engine, c10d, for Rust: a TCPStore rendezvous and a Gloo process
// group (CPU tensors) or, on GPU hosts, an NCCL one made by csrc/nccl.cpp, with the three
// collectives data-parallel training needs. tch 0.24 binds none of c10d; everything called
// here is exported by libtorch_cpu, so a binary built with this file still starts on a host
// without CUDA. Compiled by build.rs; the Gloo names its header needs come from
// csrc/gloo-names (the torch wheel ships no Gloo headers).
// libtorch_cpu is built with Gloo; its header asks to be told.
#define USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {
// The message of a c10 error without the C++ backtrace libtorch appends to it.
char* error_copy(const std::exception& e) {
  auto c10_error = dynamic_cast<const c10::Error*>(&e);
  return strdup(c10_error != nullptr ? c10_error->what_without_backtrace() : e.what());
}

// A rendezvous store and the process group built on it; the store must outlive the group.
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Runs one collective and waits for it; returns null, or the error's message.
template <typename F>
char* run(Group* group, F collective) {
  try {
    c10::intrusive_ptr<c10d::Work> work = collective(*group->backend);
    work->wait();
    return nullptr;
  } catch (const std::exception& e) {
    return error_copy(e);
  }
}
}  // namespace

extern "C" {

// Makes a backend other than Gloo on a store: csrc/nccl.cpp's cdm_nccl_backend, whose library
// src/distributed.rs loads on GPU hosts only. Returns a c10d::Backend* holding one reference, or
// null with *error set.
typedef void* (*cdm_backend_factory)(void* store, int rank, int world, int device, int64_t timeout_ms, char** error);

// Joins the group of `world` ranks that meets at master_addr:port (rank 0 serves the store
// there), with Gloo as the backend, or the backend `make_backend` makes for CUDA device `device`
// when it is not null. Every collective and the rendezvous itself fail after `timeout_ms`.
// Returns the group, or null with *error set (free it with cdm_free_error).
void* cdm_dist_new(const char* master_addr, int port, int rank, int world, int64_t timeout_ms,
                   cdm_backend_factory make_backend, int device, char** error) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = rank == 0;
    options.numWorkers = static_cast<std::size_t>(world);
    options.waitWorkers = true;
    options.timeout = timeout;
    std::unique_ptr<Group> group(new Group);
    group->store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), options);
    if (make_backend == nullptr) {
      auto gloo = c10d::ProcessGroupGloo::Options::create_default(timeout);
      group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world, gloo);
    } else {
      void* made = make_backend(&group->store, rank, world, device, timeout_ms, error);
      if (made == nullptr) return nullptr;
      group->backend = c10::intrusive_ptr<c10d::Backend>::reclaim(static_cast<c10d::Backend*>(made));
    }
    return group.release();
  } catch (const std::exception& e) {
    *error = error_copy(e);
    return nullptr;
  }
}

// Sums `tensor` (dense, contiguous) over every rank, in place, the same result on each.
char* cdm_dist_all_reduce_sum(void* group, at::Tensor* tensor) {
  return run(static_cast<Group*>(group), [&](c10d::Backend& backend) {
    std::vector<at::Tensor> tensors{*tensor};
    return backend.allreduce(tensors);
  });
}

// Copies rank `root`'s `tensor` into every other rank's, in place.
char* cdm_dist_broadcast(void* group, at::Tensor* tensor, int root) {
  return run(static_cast<Group*>(group), [&](c10d::Backend& backend) {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    return backend.broadcast(tensors, options);
  });
}

// Returns once every rank has called it.
char* cdm_dist_barrier(void* group) {
  return run(static_cast<Group*>(group), [](c10d::Backend& backend) { return backend.barrier(); });
}

void cdm_dist_free(void* group) { delete static_cast<Group*>(group); }

}  // extern "C"
