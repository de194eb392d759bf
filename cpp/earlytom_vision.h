// earlytom_vision: run the vision side of an EarlyTom engine directory from C++ (TensorRT 10.x / 11.x API).
//
//   earlytom::Vision vision({"engines/ov7b/vision_head.plan", "engines/ov7b/vision_tail.plan"});
//   earlytom::VisualTokens out = vision.run(pixels_device_ptr, frames, stream);
//   // out.tokens: device pointer to [out.count, llm_hidden] visual tokens for the decoder's prompt table
//
// The plans run in the order given; each is a stretch of the vision encoder with its plugin layers
// (FrameMerge after a stretch, TokenSelect after the last). The plugins are compiled ahead of time into the
// plans, so no Python and no plugin library are needed at run time. What the plans must look like:
//   - the first plan's one input is "pixels" [F, *unit_shape] (manifest vision.unit_shape; LLaVA-OV: [F, 3, S, S]);
//   - every later input reads the latest earlier output of the same name (hidden_<l>: the merged frames);
//   - dimension 0 of every input is the frame axis (F at first, N after a plan that writes "count");
//   - "count" (the frames after a merge; an official plan writes [N, segments], only N is read) and
//     "selected_count" (K) are int32;
//   - the last plan writes "selected" [K, llm_hidden] and "selected_count".
// Output buffers are allocated once at TensorRT's upper bound (getMaxOutputSize at the profiles' largest
// input shapes) and bound with setTensorAddress; a later plan reads an earlier plan's output in place. The
// host round trips are the 4-byte counts: one per merge (it sets the next plan's shapes) and K at the end.
#pragma once

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace earlytom {

struct VisualTokens {
  const void* tokens;      // device, [count, llm_hidden] in the last plan's dtype; valid until the next run()
  int count;               // K selected tokens (the caller appends visual_suffix.safetensors)
  int frames_after_merge;  // N frames left after the last FrameMerge
};

class Vision {
 public:
  // plans: plan files in run order. Throws std::runtime_error naming the plan and what is wrong with it.
  explicit Vision(const std::vector<std::string>& plans);
  Vision(const Vision&) = delete;
  Vision& operator=(const Vision&) = delete;

  int max_frames() const;                      // F of the first plan's largest "pixels" profile shape
  std::size_t pixel_bytes(int frames) const;   // bytes of "pixels" [frames, *unit_shape] in the plan's dtype

  // pixels: device pointer (256-byte aligned, as cudaMalloc gives) to [frames, *unit_shape] in the first plan's
  // dtype, 1 <= frames <= max_frames(). Enqueues every plan on `stream` (use a non-default stream) and
  // synchronises it once per merge and once at the end. One run at a time per Vision.
  VisualTokens run(const void* pixels, int frames, cudaStream_t stream);

 private:
  struct DeviceFree {
    void operator()(void* ptr) const noexcept { cudaFree(ptr); }
  };
  struct Buffer {
    void* ptr;
    std::size_t bytes;
  };
  using Buffers = std::map<std::string, Buffer>;  // by tensor name
  struct Plan {
    std::string path;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;  // declared before context: destroyed after it
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    Buffers outputs;
  };

  Plan load(const std::string& path) const;
  void bind(Plan& plan, const Buffers& earlier);
  void allocate_outputs(Plan& plan);

  // Members are destroyed in reverse order: contexts and engines, then the buffers they were bound to,
  // then the runtime that made the engines.
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::vector<std::unique_ptr<void, DeviceFree>> allocations_;
  std::vector<Plan> plans_;
};

}  // namespace earlytom
