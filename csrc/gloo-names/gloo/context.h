#pragma once
// Names only: see ../README.md. ProcessGroupGloo.hpp's inline setTimeout names this method.
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
