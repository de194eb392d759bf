// earlytom_vision: run the vision side of an EarlyTom engine directory from C++.
//
//   earlytom::Vision vision("engines/ov7b", /*max_frames=*/32);
//   earlytom::VisualTokens out = vision.run(pixels_device_ptr, frames, stream);
//   // out.tokens: device pointer to [out.count, llm_hidden] visual tokens for the decoder's prompt table
//
// Buffers are allocated once at the largest shapes and bound with setTensorAddress; the tail plan reads
// the head plan's merged frames in place. The one host round trip is the 4-byte frame count after merging.
#pragma once

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace earlytom {

struct VisualTokens {
  const void* tokens;  // device, [count, llm_hidden], the plans' dtype
  int count;           // K selected tokens (the image_newline is appended by the caller)
  int frames_after_merge;
};

class Vision {
 public:
  // Loads <dir>/vision_head.plan and <dir>/vision_tail.plan; throws std::runtime_error on failure.
  Vision(const std::string& engine_dir, int max_frames);
  ~Vision();
  Vision(const Vision&) = delete;
  Vision& operator=(const Vision&) = delete;

  // pixels: device pointer to [frames, 3, S, S] in the plans' input dtype. Synchronises `stream` once.
  VisualTokens run(const void* pixels, int frames, cudaStream_t stream);

 private:
  struct Plan {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
  };
  Plan load(const std::string& path);
  void bind(Plan& plan);

  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  Plan head_, tail_;
  std::map<std::string, void*> buffers_;  // by tensor name; the tail's inputs alias the head's outputs
  int max_frames_;
};

}  // namespace earlytom
