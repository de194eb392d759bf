// earlytom_vision_example ENGINE_DIR [FRAMES]: runs the vision plans on zero pixels and prints the counts.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <iostream>

#include "earlytom_vision.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " ENGINE_DIR [FRAMES]\n";
    return 2;
  }
  const int frames = argc > 2 ? std::atoi(argv[2]) : 32;
  try {
    earlytom::Vision vision(argv[1], frames);
    void* pixels = nullptr;
    const size_t bytes = static_cast<size_t>(frames) * 3 * 384 * 384 * 2;  // fp16 SigLIP input
    cudaMalloc(&pixels, bytes);
    cudaMemset(pixels, 0, bytes);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    earlytom::VisualTokens out = vision.run(pixels, frames, stream);
    std::cout << "frames in " << frames << ", after merge " << out.frames_after_merge << ", visual tokens "
              << out.count << "\n";
    cudaFree(pixels);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
