#include "earlytom_vision.h"

#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace earlytom {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ICudaEngine;

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};
Logger logger;  // TensorRT keeps a reference: it must outlive every runtime

[[noreturn]] void fail(const std::string& plan, const std::string& what) {
  throw std::runtime_error(plan + ": " + what);
}

void check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(status));
}

std::size_t element_size(DataType type) {
  switch (type) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT64: return 8;
    case DataType::kINT8: case DataType::kUINT8: case DataType::kBOOL: case DataType::kFP8: return 1;
    default: throw std::runtime_error("a plan has a sub-byte tensor (INT4/FP4/E8M0); earlytom_vision reads none");
  }
}

// Bytes of a linear tensor of shape `dims` (every dimension known).
std::size_t tensor_bytes(const Dims& dims, DataType type) {
  std::size_t bytes = element_size(type);
  for (int i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) throw std::runtime_error("a tensor shape has an unknown (-1) dimension");
    bytes *= static_cast<std::size_t>(dims.d[i]);
  }
  return bytes;
}

bool is_input(const ICudaEngine& engine, const char* name) {
  return engine.getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
}

bool is_output(const ICudaEngine& engine, const char* name) {
  return engine.getTensorIOMode(name) == nvinfer1::TensorIOMode::kOUTPUT;
}

// The largest shape of input `name` in profile 0 (the only profile the builder adds), frame axis first.
Dims largest_shape(const ICudaEngine& engine, const char* name) {
  return engine.getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMAX);
}

// Every tensor must be a plain row-major device buffer: that is what the sizes here assume.
void check_layout(const ICudaEngine& engine, const std::string& plan, const char* name) {
  if (engine.getTensorLocation(name) != nvinfer1::TensorLocation::kDEVICE || engine.getTensorVectorizedDim(name) != -1)
    fail(plan, std::string("tensor ") + name + " is not a linear device tensor; rebuild the plan with earlytom");
}

// Frame axis set to `frames` on every input of `plan` ([F, *unit_shape] pixels, [N, L, D] hidden, [N] is_static).
void set_input_shapes(nvinfer1::IExecutionContext& context, const ICudaEngine& engine, const std::string& plan,
                      int frames) {
  for (int i = 0; i < engine.getNbIOTensors(); ++i) {
    const char* name = engine.getIOTensorName(i);
    if (!is_input(engine, name)) continue;
    Dims dims = largest_shape(engine, name);
    dims.d[0] = frames;
    if (!context.setInputShape(name, dims))
      fail(plan, "TensorRT refused " + std::to_string(frames) + " frames for input " + name);
  }
}

// An int32 [1] count the plan wrote on `stream`; synchronises the stream.
int read_count(const void* device, const std::string& what, cudaStream_t stream) {
  std::int32_t value = 0;
  check(cudaMemcpyAsync(&value, device, sizeof value, cudaMemcpyDeviceToHost, stream), "read " + what);
  check(cudaStreamSynchronize(stream), "run up to " + what);
  return value;
}

}  // namespace

Vision::Vision(const std::vector<std::string>& plans) : runtime_(nvinfer1::createInferRuntime(logger)) {
  if (!runtime_) throw std::runtime_error("TensorRT could not create a runtime; see its message above");
  if (plans.empty()) throw std::invalid_argument("no plan files; pass them in run order (vision_head.plan, ...)");
  Buffers latest;  // the latest output of each name among the plans loaded so far
  for (const std::string& path : plans) {
    Plan plan = load(path);
    bind(plan, latest);
    allocate_outputs(plan);
    for (const auto& [name, buffer] : plan.outputs) latest[name] = buffer;
    plans_.push_back(std::move(plan));
  }
  const Plan& last = plans_.back();
  for (const char* name : {"selected", "selected_count"})
    if (!last.outputs.count(name)) fail(last.path, std::string("the last plan must write ") + name);
}

Vision::Plan Vision::load(const std::string& path) const {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path, "cannot open it; build the engine directory with build_engine --backend tensorrt");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) fail(path, "read error");
  Plan plan{path, std::unique_ptr<ICudaEngine>(runtime_->deserializeCudaEngine(bytes.data(), bytes.size())), {}, {}};
  if (!plan.engine)
    fail(path, "TensorRT cannot load it (built with another TensorRT version or for another GPU? see its message "
               "above); rebuild the engine directory on this machine");
  plan.context.reset(plan.engine->createExecutionContext());
  if (!plan.context) fail(path, "TensorRT could not create an execution context (out of device memory?)");
  return plan;
}

// Inputs at their largest shapes (so TensorRT can bound the outputs); a later plan's inputs point at the
// earlier outputs they read; the first plan's "pixels" is bound to the caller's pointer in run().
void Vision::bind(Plan& plan, const Buffers& earlier) {
  const ICudaEngine& engine = *plan.engine;
  const bool first = plans_.empty();
  for (int i = 0; i < engine.getNbIOTensors(); ++i) {
    const char* name = engine.getIOTensorName(i);
    if (!is_input(engine, name)) continue;
    check_layout(engine, plan.path, name);
    const std::string tensor = name;
    const Dims largest = largest_shape(engine, name);
    if (!plan.context->setInputShape(name, largest)) fail(plan.path, "no valid shape for input " + tensor);
    if (first) {
      if (tensor != "pixels") fail(plan.path, "the first plan's input must be pixels, not " + tensor);
      continue;
    }
    // a later plan's input reads the latest earlier output of its name
    const auto source = earlier.find(tensor);
    if (source == earlier.end()) fail(plan.path, "no earlier plan writes input " + tensor + "; check the plan order");
    if (tensor_bytes(largest, engine.getTensorDataType(name)) > source->second.bytes)
      fail(plan.path, "input " + tensor + " is larger than the " + source->first + " written before it");
    if (!plan.context->setTensorAddress(name, source->second.ptr)) fail(plan.path, "cannot bind " + tensor);
  }
}

// One buffer per output at TensorRT's upper bound for the largest inputs (the data-dependent frame and token
// counts included), allocated once.
void Vision::allocate_outputs(Plan& plan) {
  const ICudaEngine& engine = *plan.engine;
  for (int i = 0; i < engine.getNbIOTensors(); ++i) {
    const char* name = engine.getIOTensorName(i);
    if (!is_output(engine, name)) continue;
    check_layout(engine, plan.path, name);
    const std::string tensor = name;
    if ((tensor == "count" || tensor == "selected_count") && engine.getTensorDataType(name) != DataType::kINT32)
      fail(plan.path, "output " + tensor + " must be int32");
    // 0 or -1: no bound (a data-dependent size the plugin did not bound); that would need an IOutputAllocator.
    const std::int64_t bound = plan.context->getMaxOutputSize(name);
    if (bound <= 0) fail(plan.path, "TensorRT gives no upper bound for output " + tensor);
    const std::size_t bytes = static_cast<std::size_t>(bound);
    void* ptr = nullptr;
    check(cudaMalloc(&ptr, bytes), "allocate " + tensor + " of " + plan.path);
    std::unique_ptr<void, DeviceFree> owned(ptr);
    allocations_.push_back(std::move(owned));
    if (!plan.context->setTensorAddress(name, ptr)) fail(plan.path, "cannot bind " + tensor);
    plan.outputs[tensor] = {ptr, bytes};
  }
}

int Vision::max_frames() const {
  return static_cast<int>(largest_shape(*plans_.front().engine, "pixels").d[0]);
}

std::size_t Vision::pixel_bytes(int frames) const {
  const ICudaEngine& engine = *plans_.front().engine;
  Dims dims = largest_shape(engine, "pixels");
  dims.d[0] = frames;
  return tensor_bytes(dims, engine.getTensorDataType("pixels"));
}

VisualTokens Vision::run(const void* pixels, int frames, cudaStream_t stream) {
  if (frames < 1 || frames > max_frames())
    throw std::invalid_argument("frames = " + std::to_string(frames) + "; pass 1 to " + std::to_string(max_frames()) +
                                " (the plans' largest profile), or rebuild with more --frames");
  Plan& head = plans_.front();
  if (!head.context->setInputTensorAddress("pixels", pixels))
    fail(head.path, "TensorRT refused the pixels pointer (it must be a 256-byte aligned device pointer)");
  int rows = frames;  // the frame axis of the next plan's inputs: F, then N after each merge
  for (Plan& plan : plans_) {
    set_input_shapes(*plan.context, *plan.engine, plan.path, rows);
    if (!plan.context->enqueueV3(stream)) fail(plan.path, "enqueueV3 failed; see TensorRT's message above");
    const auto count = plan.outputs.find("count");
    if (count == plan.outputs.end()) continue;
    const int merged = read_count(count->second.ptr, plan.path + " count", stream);
    if (merged < 1 || merged > rows)
      fail(plan.path, "merged " + std::to_string(rows) + " frames into " + std::to_string(merged) + "; wrong plan");
    rows = merged;
  }
  const Plan& tail = plans_.back();
  const int selected = read_count(tail.outputs.at("selected_count").ptr, tail.path + " selected_count", stream);
  if (selected < 0) fail(tail.path, "selected " + std::to_string(selected) + " tokens; the plan is wrong");
  return {tail.outputs.at("selected").ptr, selected, rows};
}

}  // namespace earlytom
