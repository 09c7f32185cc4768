// Strided copy kernel for aoti_torch_copy_ / clone when source and destination layouts differ
// (e.g. a transposed view copied into a contiguous buffer). One thread per element, grid-stride loop.
#include "strided_copy.h"

namespace tq::shim {

namespace {

template <typename T>
__global__ void strided_copy_kernel(T* dst, const T* src, int64_t numel, StridedCopy l) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rem = i, d_off = 0, s_off = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      int64_t idx = rem % l.sizes[d];
      rem /= l.sizes[d];
      d_off += idx * l.dst_strides[d];
      s_off += idx * l.src_strides[d];
    }
    dst[d_off] = src[s_off];
  }
}

struct alignas(16) Bytes16 {
  uint64_t a, b;
};

template <typename T>
cudaError_t launch(void* dst, const void* src, int64_t numel, const StridedCopy& l, cudaStream_t stream) {
  const int threads = 256;
  int64_t blocks = (numel + threads - 1) / threads;
  if (blocks > 65535) blocks = 65535;
  strided_copy_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<T*>(dst), static_cast<const T*>(src), numel, l);
  return cudaGetLastError();
}

}  // namespace

cudaError_t strided_copy_cuda(void* dst, const void* src, int64_t numel, size_t elem_size, const StridedCopy& l,
                              cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  switch (elem_size) {
    case 1: return launch<uint8_t>(dst, src, numel, l, stream);
    case 2: return launch<uint16_t>(dst, src, numel, l, stream);
    case 4: return launch<uint32_t>(dst, src, numel, l, stream);
    case 8: return launch<uint64_t>(dst, src, numel, l, stream);
    case 16: return launch<Bytes16>(dst, src, numel, l, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace tq::shim
