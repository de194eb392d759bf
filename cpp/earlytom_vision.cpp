#include "earlytom_vision.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>

namespace earlytom {
namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
} logger;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

size_t element_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    default: return 1;
  }
}

// The tail plan reads these head outputs in place.
const std::map<std::string, std::string> kShared = {{"hidden", "merged"}, {"is_static", "is_static"}};

}  // namespace

Vision::Vision(const std::string& engine_dir, int max_frames)
    : runtime_(nvinfer1::createInferRuntime(logger)), max_frames_(max_frames) {
  head_ = load(engine_dir + "/vision_head.plan");
  tail_ = load(engine_dir + "/vision_tail.plan");
  bind(head_);
  bind(tail_);
}

Vision::~Vision() {
  for (auto& [name, ptr] : buffers_) cudaFree(ptr);
}

Vision::Plan Vision::load(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path + "; build it with build_engine --backend tensorrt");
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  Plan plan;
  plan.engine.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
  if (!plan.engine) throw std::runtime_error(path + " was built for another TensorRT version or GPU; rebuild it");
  plan.context.reset(plan.engine->createExecutionContext());
  return plan;
}

void Vision::bind(Plan& plan) {
  for (int i = 0; i < plan.engine->getNbIOTensors(); ++i) {
    std::string name = plan.engine->getIOTensorName(i);
    auto shared = kShared.find(name);
    std::string buffer = shared != kShared.end() && buffers_.count(shared->second) ? shared->second : name;
    if (!buffers_.count(buffer)) {
      // Largest shape: profile 0's maximum for inputs, the engine's (upper-bound) shape for outputs.
      nvinfer1::Dims dims = plan.engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT
          ? plan.engine->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX)
          : plan.engine->getTensorShape(name.c_str());
      size_t count = 1;
      for (int d = 0; d < dims.nbDims; ++d) count *= dims.d[d] < 0 ? max_frames_ : dims.d[d];
      void* ptr = nullptr;
      check(cudaMalloc(&ptr, count * element_size(plan.engine->getTensorDataType(name.c_str()))), "cudaMalloc");
      buffers_[buffer] = ptr;
    }
    plan.context->setTensorAddress(name.c_str(), buffers_[buffer]);
  }
}

VisualTokens Vision::run(const void* pixels, int frames, cudaStream_t stream) {
  nvinfer1::Dims in = head_.engine->getProfileShape("pixels", 0, nvinfer1::OptProfileSelector::kMAX);
  in.d[0] = frames;
  size_t bytes = element_size(head_.engine->getTensorDataType("pixels"));
  for (int d = 0; d < in.nbDims; ++d) bytes *= in.d[d];
  check(cudaMemcpyAsync(buffers_["pixels"], pixels, bytes, cudaMemcpyDeviceToDevice, stream), "copy pixels");
  head_.context->setInputShape("pixels", in);
  if (!head_.context->enqueueV3(stream)) throw std::runtime_error("vision_head.plan failed");
  int merged = 0, selected = 0;
  check(cudaMemcpyAsync(&merged, buffers_["count"], sizeof(int), cudaMemcpyDeviceToHost, stream), "count");
  check(cudaStreamSynchronize(stream), "sync");
  nvinfer1::Dims hidden = tail_.engine->getProfileShape("hidden", 0, nvinfer1::OptProfileSelector::kMAX);
  hidden.d[0] = merged;
  tail_.context->setInputShape("hidden", hidden);
  tail_.context->setInputShape("is_static", nvinfer1::Dims{1, {merged}});
  if (!tail_.context->enqueueV3(stream)) throw std::runtime_error("vision_tail.plan failed");
  check(cudaMemcpyAsync(&selected, buffers_["selected_count"], sizeof(int), cudaMemcpyDeviceToHost, stream), "K");
  check(cudaStreamSynchronize(stream), "sync");
  return {buffers_["selected"], selected, merged};
}

}  // namespace earlytom
