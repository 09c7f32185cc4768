// Element-wise copy between two strided views of the same shape and dtype (no dtype conversion).
// The CUDA version runs on the given stream; the host version is the same loop for CPU tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tq::shim {

constexpr int kMaxDims = 16;

struct StridedCopy {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t dst_strides[kMaxDims] = {};  // in elements
  int64_t src_strides[kMaxDims] = {};
};

cudaError_t strided_copy_cuda(void* dst, const void* src, int64_t numel, size_t elem_size, const StridedCopy& layout,
                              cudaStream_t stream);
void strided_copy_host(void* dst, const void* src, int64_t numel, size_t elem_size, const StridedCopy& layout);

}  // namespace tq::shim
