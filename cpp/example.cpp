// earlytom_vision_example ENGINE_DIR [FRAMES [PLAN...]]: runs the vision plans on zero pixels and prints the
// counts. FRAMES defaults to the plans' largest; PLAN... (in run order, relative to ENGINE_DIR) to the two plans
// build_engine --backend tensorrt writes today (earlytom/engine_builder/tensorrt.py, network_plans).
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "earlytom_vision.h"

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

int parse_frames(const char* text) {
  char* end = nullptr;
  const long frames = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || frames < 1 || frames > 1 << 20)
    throw std::invalid_argument(std::string("FRAMES = ") + text + "; pass a positive whole number");
  return static_cast<int>(frames);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " ENGINE_DIR [FRAMES [PLAN...]]\n";
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::string> plans;
  for (int i = 3; i < argc; ++i) plans.push_back(dir + "/" + argv[i]);
  if (plans.empty()) plans = {dir + "/vision_head.plan", dir + "/vision_tail.plan"};
  try {
    earlytom::Vision vision(plans);
    const int frames = argc > 2 ? parse_frames(argv[2]) : vision.max_frames();
    const std::size_t bytes = vision.pixel_bytes(frames);  // [frames, *unit_shape] in the plan's dtype
    void* raw = nullptr;
    check(cudaMalloc(&raw, bytes), "allocate pixels");
    const std::unique_ptr<void, decltype(&cudaFree)> pixels(raw, &cudaFree);
    check(cudaMemset(pixels.get(), 0, bytes), "zero pixels");
    cudaStream_t raw_stream = nullptr;
    check(cudaStreamCreate(&raw_stream), "create stream");
    const std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> stream(raw_stream, &cudaStreamDestroy);
    const earlytom::VisualTokens out = vision.run(pixels.get(), frames, stream.get());
    std::cout << "frames in " << frames << ", after merge " << out.frames_after_merge << ", visual tokens "
              << out.count << "\n";
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
