// A stand-in for libcudart.so.13 (and, as an empty library, libcuda.so.1) that simulates one CUDA device
// in host memory, so the delegate's host-side logic can be tested on a machine without a GPU:
// dlopen of the model .so from the program, container creation, weights loading, constant sharing
// between methods, I/O staging, teardown. "Device" memory is malloc'ed, copies are memcpy, streams are
// synchronous, and kernel launches fail (nothing here can run device code), so only model .so's that
// do their work through cudart calls run under it: the synthetic one does, real inductor output does not.
//
// Used by ctest (synthetic_run_simulated) through LD_LIBRARY_PATH; never installed or linked.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

constexpr size_t kTotal = size_t(80) << 30;  // pretend 80 GiB
std::mutex g_mu;
std::map<uintptr_t, size_t> g_allocs;  // base -> size
size_t g_used = 0;
cudaError_t g_last = cudaSuccess;  // sticky launch error, reported by cudaGetLastError

void* sim_alloc(size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) return nullptr;
  std::lock_guard<std::mutex> lk(g_mu);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = n;
  g_used += n;
  return p;
}

cudaError_t sim_free(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return cudaErrorInvalidValue;
  g_used -= it->second;
  g_allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}

bool is_device(const void* p) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto u = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(u);
  if (it == g_allocs.begin()) return false;
  --it;
  return u < it->first + (it->second ? it->second : 1);
}

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* n) { return *n = 1, cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { return *d = 0, cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strncpy(p->name, "simulated CUDA device (host memory, tests only)", sizeof p->name - 1);
  p->totalGlobalMem = kTotal;
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "simulated CUDA error"; }
cudaError_t cudaGetLastError() {
  cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  std::lock_guard<std::mutex> lk(g_mu);
  *total_b = kTotal;
  *free_b = kTotal - g_used;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) { return (*p = sim_alloc(n)) ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
cudaError_t cudaFree(void* p) { return sim_free(p); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return sim_free(p); }
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  static int dummy;
  *pool = reinterpret_cast<cudaMemPool_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }

cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { return std::memmove(d, s, n), cudaSuccess; }
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(d, s, n, k);
}
cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { return std::memset(d, v, n), cudaSuccess; }
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  std::memset(a, 0, sizeof *a);
  a->type = is_device(p) ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<int*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// Kernel registration and launch (nvcc-generated code): registration succeeds, launches fail.
void** __cudaRegisterFatBinary(void*) {
  static void* handle = nullptr;
  return &handle;
}
void __cudaRegisterFatBinaryEnd(void**) {}
void __cudaUnregisterFatBinary(void**) {}
void __cudaRegisterFunction(void**, const char*, char*, const char*, int, void*, void*, void*, void*, int*) {}
unsigned __cudaPushCallConfiguration(dim3, dim3, size_t, void*) { return 0; }
cudaError_t __cudaPopCallConfiguration(dim3*, dim3*, size_t*, void*) { return cudaSuccess; }
cudaError_t __cudaGetKernel(void*, const void*) { return g_last = cudaErrorNotSupported; }
cudaError_t __cudaLaunchKernel(...) { return g_last = cudaErrorNotSupported; }
cudaError_t cudaLaunchKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  return g_last = cudaErrorNotSupported;
}

}  // extern "C"
