// aoti_torch_* shims on our own tensor type; see shims.h for how the model .so finds them.
//
// Error handling follows torch's shims: every AOTITorchError function catches its own exceptions and
// returns AOTI_TORCH_FAILURE (the message is kept in tq::shim::last_error() for the delegate to report);
// aoti_torch_check throws, as in torch, so the model's run() turns it into an error code.
#include "shims.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "strided_copy.h"

namespace tq::shim {

// ============================================================================================
// State: current stream, grad mode, memory accounting, last error
// ============================================================================================
namespace {

thread_local cudaStream_t t_stream = nullptr;
thread_local bool t_grad_enabled = false;
thread_local std::string t_last_error;

std::atomic<int64_t> g_live_bytes{0};
std::atomic<int64_t> g_peak_bytes{0};

void track_alloc(int64_t n) {
  int64_t live = g_live_bytes.fetch_add(n) + n;
  int64_t peak = g_peak_bytes.load();
  while (live > peak && !g_peak_bytes.compare_exchange_weak(peak, live)) {
  }
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Freed blocks stay in the stream-ordered pool instead of going back to the driver at each sync, so
// per-step temporaries cost no cudaMalloc: the pool acts as a caching allocator.
void configure_pool_once(int device) {
  static std::once_flag once;
  std::call_once(once, [device] {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
  });
}

void* cuda_alloc(size_t nbytes) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  configure_pool_once(device);
  void* p = nullptr;
  check_cuda(cudaMallocAsync(&p, nbytes == 0 ? 1 : nbytes, t_stream), "cudaMallocAsync");
  track_alloc(static_cast<int64_t>(nbytes));
  return p;
}

void cuda_free(void* p, size_t nbytes) {
  // Stream-ordered: safe while kernels queued on this stream still read the block.
  cudaFreeAsync(p, t_stream);
  g_live_bytes.fetch_sub(static_cast<int64_t>(nbytes));
}

// Runs `body`, turning exceptions into AOTI_TORCH_FAILURE with the message kept for the delegate.
template <typename F>
AOTITorchError guarded(const char* fn, F&& body) {
  try {
    body();
    return AOTI_TORCH_SUCCESS;
  } catch (const std::exception& e) {
    t_last_error = std::string(fn) + ": " + e.what();
  } catch (...) {
    t_last_error = std::string(fn) + ": unknown exception";
  }
  return AOTI_TORCH_FAILURE;
}

AtenTensorOpaque* T(AtenTensorHandle h) {
  if (!h) throw std::invalid_argument("null tensor handle");
  return h;
}

void require(bool cond, const std::string& msg) {
  if (!cond) throw std::invalid_argument(msg);
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> st(sizes.size());
  int64_t acc = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    st[i] = acc;
    acc *= sizes[i] > 1 ? sizes[i] : 1;
  }
  return st;
}

AtenTensorHandle new_view(const AtenTensorOpaque& base, std::vector<int64_t> sizes, std::vector<int64_t> strides,
                          int64_t offset, int32_t dtype) {
  auto* t = new AtenTensorOpaque;
  t->storage = base.storage;
  t->storage_offset = offset;
  t->dtype = dtype;
  t->sizes = std::move(sizes);
  t->strides = std::move(strides);
  return t;
}

AtenTensorHandle new_owning(std::vector<int64_t> sizes, std::vector<int64_t> strides, int32_t dtype,
                            int32_t device_type, int32_t device_index) {
  size_t es = element_size(dtype);
  require(es != 0, "unsupported dtype " + std::to_string(dtype));
  auto t = std::make_unique<AtenTensorOpaque>();
  t->dtype = dtype;
  t->sizes = std::move(sizes);
  t->strides = std::move(strides);
  t->storage = allocate(static_cast<size_t>(t->span()) * es, device_type, device_index);
  return t.release();
}

std::vector<int64_t> vec(const int64_t* p, int64_t n) {
  require(n >= 0 && n <= kMaxDims, "bad ndim " + std::to_string(n));
  require(n == 0 || p != nullptr, "null sizes/strides");
  return std::vector<int64_t>(p, p + n);
}

bool on_cuda(const AtenTensorOpaque& t) { return t.storage && t.storage->device_type == kCUDA; }

// Copies src into dst (same dtype and shape), on the current stream for CUDA tensors.
void copy_into(AtenTensorOpaque& dst, const AtenTensorOpaque& src, bool blocking) {
  require(dst.dtype == src.dtype, "dtype conversion is not supported (dst " + std::to_string(dst.dtype) +
                                      ", src " + std::to_string(src.dtype) + ")");
  require(dst.numel() == src.numel(), "copy between tensors of different numel");
  int64_t n = dst.numel();
  if (n == 0) return;
  size_t es = element_size(dst.dtype);
  bool same_layout = dst.sizes == src.sizes && dst.strides == src.strides && dst.is_non_overlapping_and_dense();
  bool both_contiguous = dst.is_contiguous() && src.is_contiguous();
  bool any_cuda = on_cuda(dst) || on_cuda(src);
  if (same_layout || both_contiguous) {
    size_t nbytes = static_cast<size_t>(n) * es;
    if (any_cuda) {
      check_cuda(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), nbytes, cudaMemcpyDefault, t_stream),
                 "cudaMemcpyAsync");
      bool host_side = !on_cuda(dst) || !on_cuda(src);
      if (blocking && host_side) check_cuda(cudaStreamSynchronize(t_stream), "cudaStreamSynchronize");
    } else {
      std::memmove(dst.data_ptr(), src.data_ptr(), nbytes);
    }
    return;
  }
  require(dst.sizes == src.sizes, "strided copy needs equal shapes (broadcasting is not supported)");
  StridedCopy l;
  l.ndim = static_cast<int>(dst.sizes.size());
  for (int d = 0; d < l.ndim; ++d) {
    l.sizes[d] = dst.sizes[d];
    l.dst_strides[d] = dst.strides[d];
    l.src_strides[d] = src.strides[d];
  }
  if (on_cuda(dst) && on_cuda(src)) {
    check_cuda(strided_copy_cuda(dst.data_ptr(), src.data_ptr(), n, es, l, t_stream), "strided copy kernel");
  } else if (!any_cuda) {
    strided_copy_host(dst.data_ptr(), src.data_ptr(), n, es, l);
  } else {
    throw std::invalid_argument("strided copy between CPU and CUDA is not supported");
  }
}

template <typename V>
AOTITorchError item(const char* fn, AtenTensorHandle h, int32_t dtype, V* out) {
  return guarded(fn, [&] {
    auto* t = T(h);
    require(t->dtype == dtype, "dtype mismatch");
    require(t->numel() == 1, "item() of a tensor with more than one element");
    if (on_cuda(*t)) {
      check_cuda(cudaMemcpyAsync(out, t->data_ptr(), sizeof(V), cudaMemcpyDeviceToHost, t_stream), "cudaMemcpyAsync");
      check_cuda(cudaStreamSynchronize(t_stream), "cudaStreamSynchronize");
    } else {
      std::memcpy(out, t->data_ptr(), sizeof(V));
    }
  });
}

template <typename V>
AOTITorchError scalar_tensor(const char* fn, V value, int32_t dtype, AtenTensorHandle* ret) {
  return guarded(fn, [&] {
    AtenTensorHandle t = new_owning({}, {}, dtype, kCPU, 0);
    std::memcpy(t->data_ptr(), &value, sizeof(V));
    *ret = t;
  });
}

}  // namespace

// ============================================================================================
// tq::shim API
// ============================================================================================
size_t element_size(int32_t dtype) {
  switch (dtype) {
    case kUInt8: case kInt8: case kBool: case kFloat8_e5m2: case kFloat8_e4m3fn: case kFloat8_e5m2fnuz:
    case kFloat8_e4m3fnuz: return 1;
    case kInt16: case kFloat16: case kBFloat16: case kUInt16: return 2;
    case kInt32: case kFloat32: case kComplex32: case kUInt32: return 4;
    case kInt64: case kFloat64: case kComplex64: case kUInt64: return 8;
    case kComplex128: return 16;
    default: return 0;
  }
}

Storage::~Storage() {
  if (!owning || !data) return;
  if (device_type == kCUDA) cuda_free(data, nbytes);
  else std::free(data);
}

std::shared_ptr<Storage> allocate(size_t nbytes, int32_t device_type, int32_t device_index) {
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->device_type = device_type;
  s->device_index = device_index;
  if (device_type == kCUDA) {
    s->data = cuda_alloc(nbytes);
  } else if (device_type == kCPU) {
    s->data = std::aligned_alloc(64, (nbytes + 63) / 64 * 64 + 64);
    if (!s->data) throw std::bad_alloc();
  } else {
    throw std::invalid_argument("unsupported device type " + std::to_string(device_type));
  }
  s->owning = true;
  return s;
}

cudaStream_t current_stream() { return t_stream; }
void set_current_stream(cudaStream_t s) { t_stream = s; }
MemoryStats memory_stats() { return {g_live_bytes.load(), g_peak_bytes.load()}; }
void reset_peak_memory() { g_peak_bytes.store(g_live_bytes.load()); }
const std::string& last_error() { return t_last_error; }
long storage_use_count(AtenTensorHandle t) { return t && t->storage ? t->storage.use_count() : 0; }

void strided_copy_host(void* dst, const void* src, int64_t numel, size_t es, const StridedCopy& l) {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  for (int64_t i = 0; i < numel; ++i) {
    int64_t rem = i, d_off = 0, s_off = 0;
    for (int k = l.ndim - 1; k >= 0; --k) {
      int64_t idx = rem % l.sizes[k];
      rem /= l.sizes[k];
      d_off += idx * l.dst_strides[k];
      s_off += idx * l.src_strides[k];
    }
    std::memcpy(d + d_off * static_cast<int64_t>(es), s + s_off * static_cast<int64_t>(es), es);
  }
}

}  // namespace tq::shim

// ============================================================================================
// The tensor type
// ============================================================================================
using namespace tq::shim;

int64_t AtenTensorOpaque::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

bool AtenTensorOpaque::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    if (sizes[i] == 1) continue;
    if (sizes[i] == 0) return true;
    if (strides[i] != expected) return false;
    expected *= sizes[i];
  }
  return true;
}

bool AtenTensorOpaque::is_non_overlapping_and_dense() const {
  if (numel() == 0) return true;
  std::vector<size_t> order;
  for (size_t i = 0; i < sizes.size(); ++i)
    if (sizes[i] != 1) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return strides[a] < strides[b]; });
  int64_t expected = 1;
  for (size_t d : order) {
    if (strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

int64_t AtenTensorOpaque::span() const {
  int64_t last = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0) return 0;
    last += (sizes[i] - 1) * strides[i];
  }
  return last + 1;
}

void* AtenTensorOpaque::data_ptr() const {
  if (!storage || !storage->data) return nullptr;
  return static_cast<char*>(storage->data) + storage_offset * static_cast<int64_t>(element_size(dtype));
}

// ============================================================================================
// The C ABI
// ============================================================================================
extern "C" {

int32_t aoti_torch_device_type_cpu() { return kCPU; }
int32_t aoti_torch_device_type_cuda() { return kCUDA; }
int32_t aoti_torch_dtype_float8_e5m2() { return kFloat8_e5m2; }
int32_t aoti_torch_dtype_float8_e4m3fn() { return kFloat8_e4m3fn; }
int32_t aoti_torch_dtype_float8_e5m2fnuz() { return kFloat8_e5m2fnuz; }
int32_t aoti_torch_dtype_float8_e4m3fnuz() { return kFloat8_e4m3fnuz; }
int32_t aoti_torch_dtype_bfloat16() { return kBFloat16; }
int32_t aoti_torch_dtype_float16() { return kFloat16; }
int32_t aoti_torch_dtype_float32() { return kFloat32; }
int32_t aoti_torch_dtype_float64() { return kFloat64; }
int32_t aoti_torch_dtype_uint8() { return kUInt8; }
int32_t aoti_torch_dtype_uint16() { return kUInt16; }
int32_t aoti_torch_dtype_uint32() { return kUInt32; }
int32_t aoti_torch_dtype_uint64() { return kUInt64; }
int32_t aoti_torch_dtype_int8() { return kInt8; }
int32_t aoti_torch_dtype_int16() { return kInt16; }
int32_t aoti_torch_dtype_int32() { return kInt32; }
int32_t aoti_torch_dtype_int64() { return kInt64; }
int32_t aoti_torch_dtype_bool() { return kBool; }
int32_t aoti_torch_dtype_complex64() { return kComplex64; }
int32_t aoti_torch_dtype_complex128() { return kComplex128; }
size_t aoti_torch_dtype_element_size(int32_t dtype) { return element_size(dtype); }
int32_t aoti_torch_layout_strided() { return 0; }
int32_t aoti_torch_memory_format_contiguous_format() { return 0; }  // c10::MemoryFormat::Contiguous
int32_t aoti_torch_memory_format_preserve_format() { return 1; }    // c10::MemoryFormat::Preserve

// Inference only: grad mode is always off, but the model may toggle it around its run.
bool aoti_torch_grad_mode_is_enabled() { return t_grad_enabled; }
void aoti_torch_grad_mode_set_enabled(bool enabled) { t_grad_enabled = enabled; }

AOTITorchError aoti_torch_create_tensor_from_blob(void* data, int64_t ndim, const int64_t* sizes_ptr,
                                                  const int64_t* strides_ptr, int64_t storage_offset, int32_t dtype,
                                                  int32_t device_type, int32_t device_index, AtenTensorHandle* ret) {
  return guarded(__func__, [&] {
    require(ret != nullptr, "null output pointer");
    size_t es = element_size(dtype);
    require(es != 0, "unsupported dtype " + std::to_string(dtype));
    require(device_type == kCPU || device_type == kCUDA, "unsupported device type " + std::to_string(device_type));
    require(storage_offset >= 0, "negative storage offset");
    auto t = std::make_unique<AtenTensorOpaque>();
    t->sizes = vec(sizes_ptr, ndim);
    t->strides = vec(strides_ptr, ndim);
    t->dtype = dtype;
    t->storage_offset = storage_offset;
    // As torch's for_blob(...).storage_offset(n): `data` is the storage base, data_ptr = data + n * elem.
    t->storage = std::make_shared<Storage>();
    t->storage->data = data;
    t->storage->nbytes = static_cast<size_t>(storage_offset + t->span()) * es;
    t->storage->device_type = device_type;
    t->storage->device_index = device_index;
    t->storage->owning = false;
    *ret = t.release();
  });
}

AOTITorchError aoti_torch_create_tensor_from_blob_v2(void* data, int64_t ndim, const int64_t* sizes_ptr,
                                                     const int64_t* strides_ptr, int64_t storage_offset, int32_t dtype,
                                                     int32_t device_type, int32_t device_index, AtenTensorHandle* ret,
                                                     int32_t layout, const uint8_t*, int64_t opaque_metadata_size) {
  if (layout != 0 || opaque_metadata_size != 0) {
    t_last_error = "aoti_torch_create_tensor_from_blob_v2: only strided layout without opaque metadata is supported";
    return AOTI_TORCH_FAILURE;
  }
  return aoti_torch_create_tensor_from_blob(data, ndim, sizes_ptr, strides_ptr, storage_offset, dtype, device_type,
                                            device_index, ret);
}

AOTITorchError aoti_torch_empty_strided(int64_t ndim, const int64_t* sizes_ptr, const int64_t* strides_ptr,
                                        int32_t dtype, int32_t device_type, int32_t device_index,
                                        AtenTensorHandle* ret_new_tensor) {
  return guarded(__func__, [&] {
    require(ret_new_tensor != nullptr, "null output pointer");
    *ret_new_tensor = new_owning(vec(sizes_ptr, ndim), vec(strides_ptr, ndim), dtype, device_type, device_index);
  });
}

AOTITorchError aoti_torch_delete_tensor_object(AtenTensorHandle tensor) {
  return guarded(__func__, [&] { delete T(tensor); });
}

AOTITorchError aoti_torch_new_tensor_handle(AtenTensorHandle orig_handle, AtenTensorHandle* new_handle) {
  return guarded(__func__, [&] {
    auto* t = T(orig_handle);
    *new_handle = new_view(*t, t->sizes, t->strides, t->storage_offset, t->dtype);
  });
}

AOTITorchError aoti_torch__reinterpret_tensor(AtenTensorHandle self, int64_t ndim, const int64_t* sizes_ptr,
                                              const int64_t* strides_ptr, int64_t storage_offset,
                                              AtenTensorHandle* ret_new_tensor) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    // As torch::inductor::_reinterpret_tensor: the offset is added to self's storage offset.
    int64_t off = t->storage_offset + storage_offset;
    require(off >= 0, "negative storage offset");
    *ret_new_tensor = new_view(*t, vec(sizes_ptr, ndim), vec(strides_ptr, ndim), off, t->dtype);
  });
}

AOTITorchError aoti_torch_as_strided(AtenTensorHandle self, const int64_t* sizes_ptr, const int64_t* strides_ptr,
                                     AtenTensorHandle* ret) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    int64_t n = static_cast<int64_t>(t->sizes.size());
    *ret = new_view(*t, vec(sizes_ptr, n), vec(strides_ptr, n), t->storage_offset, t->dtype);
  });
}

AOTITorchError aoti_torch__alloc_from_pool(AtenTensorHandle self, int64_t offset_bytes, int32_t dtype, int64_t ndim,
                                           const int64_t* sizes_ptr, const int64_t* strides_ptr,
                                           AtenTensorHandle* ret_new_tensor) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    size_t es = element_size(dtype);
    require(es != 0, "unsupported dtype");
    int64_t base_bytes = t->storage_offset * static_cast<int64_t>(element_size(t->dtype)) + offset_bytes;
    require(base_bytes % static_cast<int64_t>(es) == 0, "pool offset not aligned to the element size");
    *ret_new_tensor = new_view(*t, vec(sizes_ptr, ndim), vec(strides_ptr, ndim), base_bytes / static_cast<int64_t>(es),
                               dtype);
  });
}

AOTITorchError aoti_torch_get_data_ptr(AtenTensorHandle tensor, void** ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->data_ptr(); });
}
AOTITorchError aoti_torch_get_storage_size(AtenTensorHandle tensor, int64_t* ret) {
  return guarded(__func__, [&] {
    auto* t = T(tensor);
    *ret = t->storage ? static_cast<int64_t>(t->storage->nbytes) : 0;
  });
}
AOTITorchError aoti_torch_get_dim(AtenTensorHandle tensor, int64_t* ret) {
  return guarded(__func__, [&] { *ret = static_cast<int64_t>(T(tensor)->sizes.size()); });
}
AOTITorchError aoti_torch_get_numel(AtenTensorHandle tensor, int64_t* ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->numel(); });
}
AOTITorchError aoti_torch_get_sizes(AtenTensorHandle tensor, int64_t** ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->sizes.data(); });
}
AOTITorchError aoti_torch_get_size(AtenTensorHandle tensor, int64_t d, int64_t* ret) {
  return guarded(__func__, [&] {
    auto* t = T(tensor);
    int64_t n = static_cast<int64_t>(t->sizes.size());
    if (d < 0) d += n;
    require(d >= 0 && d < n, "dim out of range");
    *ret = t->sizes[d];
  });
}
AOTITorchError aoti_torch_get_strides(AtenTensorHandle tensor, int64_t** ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->strides.data(); });
}
AOTITorchError aoti_torch_get_stride(AtenTensorHandle tensor, int64_t d, int64_t* ret) {
  return guarded(__func__, [&] {
    auto* t = T(tensor);
    int64_t n = static_cast<int64_t>(t->strides.size());
    if (d < 0) d += n;
    require(d >= 0 && d < n, "dim out of range");
    *ret = t->strides[d];
  });
}
AOTITorchError aoti_torch_get_dtype(AtenTensorHandle tensor, int32_t* ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->dtype; });
}
AOTITorchError aoti_torch_get_device_type(AtenTensorHandle tensor, int32_t* ret) {
  return guarded(__func__, [&] {
    auto* t = T(tensor);
    *ret = t->storage ? t->storage->device_type : kCPU;
  });
}
AOTITorchError aoti_torch_get_device_index(AtenTensorHandle tensor, int32_t* ret) {
  return guarded(__func__, [&] {
    auto* t = T(tensor);
    *ret = t->storage ? t->storage->device_index : 0;
  });
}
AOTITorchError aoti_torch_get_layout(AtenTensorHandle tensor, int32_t* ret) {
  return guarded(__func__, [&] {
    T(tensor);
    *ret = 0;
  });
}
AOTITorchError aoti_torch_get_storage_offset(AtenTensorHandle tensor, int64_t* ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->storage_offset; });
}
AOTITorchError aoti_torch_is_contiguous(AtenTensorHandle tensor, bool* ret) {
  return guarded(__func__, [&] { *ret = T(tensor)->is_contiguous(); });
}
AOTITorchError aoti_torch_is_defined(AtenTensorHandle tensor, bool* ret) {
  return guarded(__func__, [&] { *ret = tensor != nullptr && tensor->storage != nullptr; });
}

AOTITorchError aoti_torch_copy_(AtenTensorHandle self, AtenTensorHandle src, int32_t non_blocking) {
  return guarded(__func__, [&] { copy_into(*T(self), *T(src), non_blocking == 0); });
}
AOTITorchError aoti_torch_tensor_copy_(AtenTensorHandle src, AtenTensorHandle dst) {
  return guarded(__func__, [&] { copy_into(*T(dst), *T(src), true); });
}
AOTITorchError aoti_torch_assign_tensors_out(AtenTensorHandle src, AtenTensorHandle* ret_dst) {
  return aoti_torch_new_tensor_handle(src, ret_dst);
}

AOTITorchError aoti_torch_clone(AtenTensorHandle self, AtenTensorHandle* ret) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    require(t->storage != nullptr, "undefined tensor");
    // torch's clone() keeps the strides of a dense tensor (memory_format=preserve), else contiguous.
    auto strides = t->is_non_overlapping_and_dense() ? t->strides : contiguous_strides(t->sizes);
    std::unique_ptr<AtenTensorOpaque> out(new_owning(t->sizes, strides, t->dtype, t->storage->device_type,
                                                     t->storage->device_index));
    copy_into(*out, *t, true);
    *ret = out.release();
  });
}

AOTITorchError aoti_torch_clone_preserve_strides(AtenTensorHandle self, AtenTensorHandle* ret) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    require(t->storage != nullptr, "undefined tensor");
    // Same strides even for overlapping/padded layouts: copy the whole span the strides reach.
    std::unique_ptr<AtenTensorOpaque> out(new_owning(t->sizes, t->strides, t->dtype, t->storage->device_type,
                                                     t->storage->device_index));
    size_t nbytes = static_cast<size_t>(t->span()) * element_size(t->dtype);
    if (nbytes) {
      if (on_cuda(*t) || on_cuda(*out))
        check_cuda(cudaMemcpyAsync(out->data_ptr(), t->data_ptr(), nbytes, cudaMemcpyDefault, t_stream),
                   "cudaMemcpyAsync");
      else
        std::memcpy(out->data_ptr(), t->data_ptr(), nbytes);
    }
    *ret = out.release();
  });
}

AOTITorchError aoti_torch_zero_(AtenTensorHandle self) {
  return guarded(__func__, [&] {
    auto* t = T(self);
    require(t->is_non_overlapping_and_dense(), "zero_ of a non-dense tensor is not supported");
    size_t nbytes = static_cast<size_t>(t->numel()) * element_size(t->dtype);
    if (on_cuda(*t)) check_cuda(cudaMemsetAsync(t->data_ptr(), 0, nbytes, t_stream), "cudaMemsetAsync");
    else std::memset(t->data_ptr(), 0, nbytes);
  });
}

AOTITorchError aoti_torch_item_int64(AtenTensorHandle t, int64_t* v) { return item(__func__, t, kInt64, v); }
AOTITorchError aoti_torch_item_int32(AtenTensorHandle t, int32_t* v) { return item(__func__, t, kInt32, v); }
AOTITorchError aoti_torch_item_float32(AtenTensorHandle t, float* v) { return item(__func__, t, kFloat32, v); }
AOTITorchError aoti_torch_item_bool(AtenTensorHandle t, bool* v) { return item(__func__, t, kBool, v); }
AOTITorchError aoti_torch_scalar_to_tensor_int64(int64_t v, AtenTensorHandle* r) {
  return scalar_tensor(__func__, v, kInt64, r);
}
AOTITorchError aoti_torch_scalar_to_tensor_int32(int32_t v, AtenTensorHandle* r) {
  return scalar_tensor(__func__, v, kInt32, r);
}
AOTITorchError aoti_torch_scalar_to_tensor_float32(float v, AtenTensorHandle* r) {
  return scalar_tensor(__func__, v, kFloat32, r);
}
AOTITorchError aoti_torch_scalar_to_tensor_bool(bool v, AtenTensorHandle* r) {
  return scalar_tensor(__func__, v, kBool, r);
}

// Debug aid the model calls only when compiled with inductor's nan checks; we do not scan.
AOTITorchError aoti_torch_check_inf_and_nan(const char*, AtenTensorHandle) { return AOTI_TORCH_SUCCESS; }

// ---- guards. The model wraps its run in a device guard and a stream guard; the stream guard is what
// makes our allocations and copies stream-ordered with its kernels.
struct CUDAGuardOpaque {
  int prev_device;
};
struct CUDAStreamGuardOpaque {
  cudaStream_t prev_stream;
  int prev_device;
};
struct DeviceGuardOpaque {
  int prev_device;
};

AOTITorchError aoti_torch_create_cuda_guard(int32_t device_index, CUDAGuardHandle* ret_guard) {
  return guarded(__func__, [&] {
    auto g = std::make_unique<CUDAGuardOpaque>();
    check_cuda(cudaGetDevice(&g->prev_device), "cudaGetDevice");
    if (device_index >= 0 && device_index != g->prev_device) check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    *ret_guard = g.release();
  });
}
AOTITorchError aoti_torch_delete_cuda_guard(CUDAGuardHandle guard) {
  return guarded(__func__, [&] {
    require(guard != nullptr, "null guard");
    cudaSetDevice(guard->prev_device);
    delete guard;
  });
}
AOTITorchError aoti_torch_cuda_guard_set_index(CUDAGuardHandle guard, int32_t device_index) {
  return guarded(__func__, [&] {
    require(guard != nullptr, "null guard");
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
  });
}
AOTITorchError aoti_torch_create_cuda_stream_guard(void* stream, int32_t device_index,
                                                   CUDAStreamGuardHandle* ret_guard) {
  return guarded(__func__, [&] {
    auto g = std::make_unique<CUDAStreamGuardOpaque>();
    g->prev_stream = t_stream;
    check_cuda(cudaGetDevice(&g->prev_device), "cudaGetDevice");
    if (device_index >= 0 && device_index != g->prev_device) check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    t_stream = static_cast<cudaStream_t>(stream);
    *ret_guard = g.release();
  });
}
AOTITorchError aoti_torch_delete_cuda_stream_guard(CUDAStreamGuardHandle guard) {
  return guarded(__func__, [&] {
    require(guard != nullptr, "null guard");
    t_stream = guard->prev_stream;
    cudaSetDevice(guard->prev_device);
    delete guard;
  });
}
AOTITorchError aoti_torch_get_current_cuda_stream(int32_t, void** ret_stream) {
  return guarded(__func__, [&] { *ret_stream = t_stream; });
}
AOTITorchError aoti_torch_create_device_guard(int32_t device_index, DeviceGuardHandle* ret_guard) {
  return guarded(__func__, [&] {
    auto g = std::make_unique<DeviceGuardOpaque>();
    check_cuda(cudaGetDevice(&g->prev_device), "cudaGetDevice");
    if (device_index >= 0 && device_index != g->prev_device) check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    *ret_guard = g.release();
  });
}
AOTITorchError aoti_torch_delete_device_guard(DeviceGuardHandle guard) {
  return guarded(__func__, [&] {
    require(guard != nullptr, "null guard");
    cudaSetDevice(guard->prev_device);
    delete guard;
  });
}
AOTITorchError aoti_torch_device_guard_set_index(DeviceGuardHandle guard, int32_t device_index) {
  return guarded(__func__, [&] {
    require(guard != nullptr, "null guard");
    check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
  });
}
AOTITorchError aoti_torch_get_current_device_index(int32_t* ret_device_index) {
  return guarded(__func__, [&] {
    int d = 0;
    check_cuda(cudaGetDevice(&d), "cudaGetDevice");
    *ret_device_index = d;
  });
}

// Used by .so's compiled with AOT_INDUCTOR_USE_CACHING_ALLOCATOR (constant blob, workspaces).
namespace {
std::mutex g_raw_mu;
std::unordered_map<void*, size_t> g_raw_sizes;
}  // namespace
AOTITorchError aoti_torch_cuda_caching_allocator_raw_alloc(uint64_t nbytes, void** ret_ptr) {
  return guarded(__func__, [&] {
    void* p = cuda_alloc(nbytes);
    std::lock_guard<std::mutex> lk(g_raw_mu);
    g_raw_sizes[p] = nbytes;
    *ret_ptr = p;
  });
}
AOTITorchError aoti_torch_cuda_caching_allocator_raw_delete(void* ptr) {
  return guarded(__func__, [&] {
    if (!ptr) return;
    size_t n = 0;
    {
      std::lock_guard<std::mutex> lk(g_raw_mu);
      auto it = g_raw_sizes.find(ptr);
      require(it != g_raw_sizes.end(), "raw_delete of a pointer not from raw_alloc");
      n = it->second;
      g_raw_sizes.erase(it);
    }
    cuda_free(ptr, n);
  });
}

// Extern kernels (ops inductor could not lower and did not have a C shim for) go through torch's proxy
// executor, which needs libtorch. Fail with a message that names the cause.
AOTITorchError aoti_torch_proxy_executor_call_function(AOTIProxyExecutorHandle, int extern_node_index, int,
                                                       int64_t*, int, AtenTensorHandle*) {
  t_last_error = "the model calls an extern kernel through torch's proxy executor (node " +
                 std::to_string(extern_node_index) + "), which tq-runner does not provide";
  return AOTI_TORCH_FAILURE;
}

void aoti_torch_check(bool cond, const char* func, const char* file, uint32_t line, const char* msg) {
  if (cond) return;
  throw std::runtime_error(std::string(msg ? msg : "check failed") + " (" + (func ? func : "?") + " at " +
                           (file ? file : "?") + ":" + std::to_string(line) + ")");
}

void aoti_torch_warn(const char* func, const char* file, uint32_t line, const char* msg) {
  // Once per call site: the model may warn on every step.
  static std::mutex mu;
  static std::unordered_set<std::string> seen;
  std::string key = std::string(file ? file : "") + ":" + std::to_string(line);
  std::lock_guard<std::mutex> lk(mu);
  if (!seen.insert(key).second) return;
  std::fprintf(stderr, "warning: model: %s (%s)\n", msg ? msg : "", func ? func : "?");
}

}  // extern "C"
