// CUDA graphs for Rust: record the kernels of one network call once, then launch them all with
// one call (at::cuda::CUDAGraph). A small model's step is bound by kernel launches (docs/
// results.md §12); a replay removes the host's per-kernel cost. In libcdm_cuda.so beside the NCCL
// backend (csrc/nccl.cpp) because CUDAGraph lives in libtorch_cuda. Used by src/cuda_graph.rs.
//
// A capture runs on a stream of the pool (CUDA refuses to capture the legacy default stream),
// which first waits for the work already queued on the caller's stream; at its end the caller's
// stream becomes current again and waits for the capture stream. Replays run on the caller's
// current stream, in order with everything else it does. The capture restricts only the calling
// thread (cudaStreamCaptureModeThreadLocal): a training run's batch loader uploads from a thread
// of its own, on its own stream, while a step is captured, and CUDA's default (global) mode
// would fail those uploads and with them the capture. libtorch's autograd runs the backward pass
// on a thread of its own too, on the stream of the forward pass, so its kernels are captured.
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>
#include <optional>

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  // The caller's stream, current again once the capture ends.
  std::optional<c10::cuda::CUDAStream> ambient;
  std::optional<c10::cuda::CUDAStream> capture;
};

char* error_copy(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return strdup(c10_error->what_without_backtrace());
  return strdup(e.what());
}

// `after` waits for the work queued on `before` so far.
void order(const c10::cuda::CUDAStream& before, const c10::cuda::CUDAStream& after) {
  at::cuda::CUDAEvent event;
  event.record(before);
  event.block(after);
}

}  // namespace

extern "C" {

// Starts capturing the kernels that the calling thread queues on CUDA device `device`: returns
// the graph, or null with *error set to a strdup'ed message.
void* cdm_graph_begin(int device, char** error) {
  auto graph = new Graph();
  try {
    auto index = static_cast<c10::DeviceIndex>(device);
    graph->ambient = c10::cuda::getCurrentCUDAStream(index);
    graph->capture = c10::cuda::getStreamFromPool(false, index);
    order(*graph->ambient, *graph->capture);
    c10::cuda::setCurrentCUDAStream(*graph->capture);
    graph->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    return graph;
  } catch (const std::exception& e) {
    if (graph->ambient) c10::cuda::setCurrentCUDAStream(*graph->ambient);
    delete graph;
    *error = error_copy(e);
    return nullptr;
  }
}

// Ends the capture begun by cdm_graph_begin and makes the graph ready to replay. On failure (an
// operation that cannot be captured, such as a read back to the host, ran during the capture)
// returns the message; the graph must then only be freed. The caller's stream is current again
// either way.
char* cdm_graph_end(void* handle) {
  auto graph = static_cast<Graph*>(handle);
  char* error = nullptr;
  try {
    graph->graph.capture_end();
  } catch (const std::exception& e) {
    error = error_copy(e);
  }
  c10::cuda::setCurrentCUDAStream(*graph->ambient);
  if (error == nullptr) order(*graph->capture, *graph->ambient);
  return error;
}

// Launches the captured kernels on the current stream: null, or an error message.
char* cdm_graph_replay(void* handle) {
  try {
    static_cast<Graph*>(handle)->graph.replay();
    return nullptr;
  } catch (const std::exception& e) {
    return error_copy(e);
  }
}

// Frees the graph and its memory pool; the caller first waits for the replays it queued.
void cdm_graph_free(void* handle) { delete static_cast<Graph*>(handle); }

}  // extern "C"
