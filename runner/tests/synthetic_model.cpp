// A synthetic AOTInductor model .so, for testing the CudaBackend delegate end to end on a GPU without a
// real export. It implements the container C API (aoti_runtime/interface.h) on top of the host's
// aoti_torch_* shims and cudart, importing both from the process exactly like an inductor-made .so.
//
// Model: constants `weight` (float32 [4], a parameter) and `cache` (int64 [64], a mutable buffer).
//   run(tokens int64 [1,T], input_pos int64 [T], temperature float32 [1], seed int64 [1]) -> next int64 [1]:
//     cache[input_pos[i]] = tokens[0,i];
//     next = (sum(cache[0..=input_pos[T-1]]) + int(weight[0]) + seed) % 1000
// Since decode must see the cache prefill wrote, the generated ids prove the buffer is shared; the
// delegate's load report proves decode loaded no weights of its own. synthetic_program.py embeds this
// .so as both `prefill` and `decode` and computes the expected ids.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" {
struct AtenTensorOpaque;
using AtenTensorHandle = AtenTensorOpaque*;
using AOTITorchError = int32_t;
using AOTIRuntimeError = int32_t;
struct AOTInductorConstantMapEntry {
  const char* name;
  AtenTensorHandle handle;
};
int32_t aoti_torch_device_type_cuda();
int32_t aoti_torch_dtype_float32();
int32_t aoti_torch_dtype_int64();
AOTITorchError aoti_torch_create_tensor_from_blob(void*, int64_t, const int64_t*, const int64_t*, int64_t, int32_t,
                                                  int32_t, int32_t, AtenTensorHandle*);
AOTITorchError aoti_torch_empty_strided(int64_t, const int64_t*, const int64_t*, int32_t, int32_t, int32_t,
                                        AtenTensorHandle*);
AOTITorchError aoti_torch_delete_tensor_object(AtenTensorHandle);
AOTITorchError aoti_torch_new_tensor_handle(AtenTensorHandle, AtenTensorHandle*);
AOTITorchError aoti_torch_get_data_ptr(AtenTensorHandle, void**);
AOTITorchError aoti_torch_get_sizes(AtenTensorHandle, int64_t**);
AOTITorchError aoti_torch_get_numel(AtenTensorHandle, int64_t*);
#ifdef TQ_SYNTHETIC_MISSING_SHIM
// A fallback op tq-runner does not provide: referenced but never called, to test how a model that
// imports a missing shim is reported (and that TQ_RUNNER_LAZY_SHIMS=1 still runs it).
AOTITorchError aoti_torch_cuda_mm_out(AtenTensorHandle, AtenTensorHandle, AtenTensorHandle);
#endif
}

namespace {

constexpr int64_t kCacheLen = 64;
constexpr int64_t kVocab = 1000;
const char* kNames[2] = {"L__self___weight", "L__self___cache"};
const char* kFqns[2] = {"weight", "cache"};
const int32_t kTypes[2] = {1, 2};  // Parameter, Buffer
const size_t kSizes[2] = {4 * sizeof(float), kCacheLen * sizeof(int64_t)};

struct Container {
  AtenTensorHandle constants[2] = {nullptr, nullptr};
  void* blob = nullptr;  // device copy of the weights blob when loaded from it
};

Container* C(void* h) { return static_cast<Container*>(h); }

void set_constant(Container* c, int i, AtenTensorHandle h) {
  if (c->constants[i]) aoti_torch_delete_tensor_object(c->constants[i]);
  c->constants[i] = h;
}

}  // namespace

#define API extern "C" __attribute__((visibility("default")))

API AOTIRuntimeError AOTInductorModelContainerCreateWithDevice(void** h, size_t, const char* device, const char*) {
  if (!device || std::strncmp(device, "cuda", 4) != 0) return 1;
  *h = new Container;
  return 0;
}

API AOTIRuntimeError AOTInductorModelContainerDelete(void* h) {
  Container* c = C(h);
  for (int i = 0; i < 2; ++i) set_constant(c, i, nullptr);
  if (c->blob) cudaFree(c->blob);
  delete c;
  return 0;
}

API AOTIRuntimeError AOTInductorModelContainerGetNumInputs(void*, size_t* n) { return *n = 4, 0; }
API AOTIRuntimeError AOTInductorModelContainerGetNumOutputs(void*, size_t* n) { return *n = 1, 0; }
API AOTIRuntimeError AOTInductorModelContainerGetNumConstants(void*, size_t* n) { return *n = 2, 0; }
API AOTIRuntimeError AOTInductorModelContainerGetConstantName(void*, size_t i, const char** s) {
  return i < 2 ? (*s = kNames[i], 0) : 1;
}
API AOTIRuntimeError AOTInductorModelContainerGetConstantOriginalFQN(void*, size_t i, const char** s) {
  return i < 2 ? (*s = kFqns[i], 0) : 1;
}
API AOTIRuntimeError AOTInductorModelContainerGetConstantFromFolded(void*, size_t, bool* f) { return *f = false, 0; }
API AOTIRuntimeError AOTInductorModelContainerGetConstantType(void*, size_t i, int32_t* t) {
  return i < 2 ? (*t = kTypes[i], 0) : 1;
}
API AOTIRuntimeError AOTInductorModelContainerGetConstantDtype(void*, size_t i, int32_t* d) {
  return i < 2 ? (*d = i == 0 ? aoti_torch_dtype_float32() : aoti_torch_dtype_int64(), 0) : 1;
}
API AOTIRuntimeError AOTInductorModelContainerGetConstantDataSize(void*, size_t i, size_t* s) {
  return i < 2 ? (*s = kSizes[i], 0) : 1;
}

API AOTIRuntimeError AOTInductorModelUpdateConstantsFromBlob(void* h, const uint8_t* blob) {
  Container* c = C(h);
  size_t total = kSizes[0] + kSizes[1];
  if (cudaMalloc(&c->blob, total) != cudaSuccess) return 1;
  if (cudaMemcpy(c->blob, blob, total, cudaMemcpyHostToDevice) != cudaSuccess) return 1;
  const int64_t wsz = 4, wst = 1, csz = kCacheLen, cst = 1;
  AtenTensorHandle w = nullptr, k = nullptr;
  if (aoti_torch_create_tensor_from_blob(c->blob, 1, &wsz, &wst, 0, aoti_torch_dtype_float32(),
                                         aoti_torch_device_type_cuda(), 0, &w) ||
      aoti_torch_create_tensor_from_blob(static_cast<char*>(c->blob) + kSizes[0], 1, &csz, &cst, 0,
                                         aoti_torch_dtype_int64(), aoti_torch_device_type_cuda(), 0, &k))
    return 1;
  set_constant(c, 0, w);
  set_constant(c, 1, k);
  return 0;
}

// Keyed by original FQN, like the real one (a std::unordered_map across the boundary).
API AOTIRuntimeError AOTInductorModelContainerExtractConstantsMap(void* h, void* map, bool) {
  auto* m = static_cast<std::unordered_map<std::string, AtenTensorHandle>*>(map);
  Container* c = C(h);
  for (int i = 0; i < 2; ++i)
    if (c->constants[i]) m->emplace(kFqns[i], c->constants[i]);
  return 0;
}

// Keyed by internal name; keeps a new handle to the caller's storage (what torch 2.13 does).
API AOTIRuntimeError AOTInductorModelContainerUpdateUserManagedConstantBufferPairs(
    void* h, const AOTInductorConstantMapEntry* pairs, size_t n, bool, bool) {
  Container* c = C(h);
  for (size_t p = 0; p < n; ++p) {
    int i = std::strcmp(pairs[p].name, kNames[0]) == 0 ? 0 : std::strcmp(pairs[p].name, kNames[1]) == 0 ? 1 : -1;
    if (i < 0) return 1;
    AtenTensorHandle mine = nullptr;
    if (aoti_torch_new_tensor_handle(pairs[p].handle, &mine)) return 1;
    set_constant(c, i, mine);
  }
  return 0;
}

API AOTIRuntimeError AOTInductorModelContainerRun(void* h, AtenTensorHandle* in, size_t n_in, AtenTensorHandle* out,
                                                  size_t n_out, void* stream_handle, void*) {
  Container* c = C(h);
  auto steal = [&] {  // inputs are owned by the model, as in AOTI
    for (size_t i = 0; i < n_in; ++i) aoti_torch_delete_tensor_object(in[i]);
  };
  if (n_in != 4 || n_out != 1 || !c->constants[0] || !c->constants[1]) return steal(), 1;
#ifdef TQ_SYNTHETIC_MISSING_SHIM
  if (stream_handle == reinterpret_cast<void*>(1)) aoti_torch_cuda_mm_out(in[0], in[0], in[0]);  // never true
#endif
  auto stream = static_cast<cudaStream_t>(stream_handle);
  int64_t t = 0;
  aoti_torch_get_numel(in[0], &t);
  std::vector<int64_t> tokens(t), pos(t);
  void *ptok, *ppos, *pseed, *pw, *pc;
  aoti_torch_get_data_ptr(in[0], &ptok);
  aoti_torch_get_data_ptr(in[1], &ppos);
  aoti_torch_get_data_ptr(in[3], &pseed);
  aoti_torch_get_data_ptr(c->constants[0], &pw);
  aoti_torch_get_data_ptr(c->constants[1], &pc);
  float w0 = 0;
  int64_t seed = 0;
  std::vector<int64_t> cache(kCacheLen);
  cudaMemcpyAsync(&seed, pseed, 8, cudaMemcpyDeviceToHost, stream);
  cudaMemcpyAsync(tokens.data(), ptok, t * 8, cudaMemcpyDeviceToHost, stream);
  cudaMemcpyAsync(pos.data(), ppos, t * 8, cudaMemcpyDeviceToHost, stream);
  cudaMemcpyAsync(&w0, pw, 4, cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  for (int64_t i = 0; i < t; ++i) {
    if (pos[i] < 0 || pos[i] >= kCacheLen) return steal(), 1;
    cudaMemcpyAsync(static_cast<int64_t*>(pc) + pos[i], &tokens[i], 8, cudaMemcpyHostToDevice, stream);
  }
  cudaMemcpyAsync(cache.data(), pc, kCacheLen * 8, cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  int64_t sum = static_cast<int64_t>(w0) + seed;
  for (int64_t i = 0; i <= pos[t - 1]; ++i) sum += cache[i];
  int64_t next = sum % kVocab;
  const int64_t one = 1;
  if (aoti_torch_empty_strided(1, &one, &one, aoti_torch_dtype_int64(), aoti_torch_device_type_cuda(), 0, &out[0]))
    return steal(), 1;
  void* po = nullptr;
  aoti_torch_get_data_ptr(out[0], &po);
  cudaMemcpyAsync(po, &next, 8, cudaMemcpyHostToDevice, stream);
  cudaStreamSynchronize(stream);
  steal();
  return 0;
}
