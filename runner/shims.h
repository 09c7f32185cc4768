// Our implementation of the aoti_torch_* C ABI that AOTInductor model .so's call into, on a small
// tensor type of our own (no libtorch).
//
// The symbols are extern "C" with default visibility and are linked into the executable, which is built
// with ENABLE_EXPORTS (-rdynamic): a model .so dlopen'ed with RTLD_LOCAL still resolves them from the
// global scope, and there is exactly one copy in the process. runner/check_shims.sh compares what a
// model .so imports with what tq-runner exports.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aoti_abi.h"

namespace tq::shim {

// torch ScalarType codes.
enum Dtype : int32_t {
  kUInt8 = 0, kInt8 = 1, kInt16 = 2, kInt32 = 3, kInt64 = 4, kFloat16 = 5, kFloat32 = 6, kFloat64 = 7,
  kComplex32 = 8, kComplex64 = 9, kComplex128 = 10, kBool = 11, kBFloat16 = 15, kFloat8_e5m2 = 23,
  kFloat8_e4m3fn = 24, kFloat8_e5m2fnuz = 25, kFloat8_e4m3fnuz = 26, kUInt16 = 27, kUInt32 = 28, kUInt64 = 29,
};
// torch DeviceType codes.
enum DeviceType : int32_t { kCPU = 0, kCUDA = 1 };

// Bytes per element, 0 for an unknown dtype.
size_t element_size(int32_t dtype);

// A block of memory, shared (refcounted through shared_ptr) by every tensor handle that views it.
// Owning storage was allocated by a shim (cudaMallocAsync / malloc) and is freed with the last handle;
// non-owning storage wraps a caller's pointer (create_tensor_from_blob).
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  int32_t device_type = kCPU;
  int32_t device_index = 0;
  bool owning = false;
  ~Storage();
};

// Allocates owning storage on `device_type` (CUDA: stream-ordered on the current stream).
std::shared_ptr<Storage> allocate(size_t nbytes, int32_t device_type, int32_t device_index);

// The CUDA stream the shims allocate, free and copy on. Set by the delegate around a model run (and by
// the model itself through aoti_torch_create_cuda_stream_guard). Thread-local, default stream = 0.
cudaStream_t current_stream();
void set_current_stream(cudaStream_t s);

// Bytes of live CUDA memory allocated through the shims, and the high-water mark. The model's constant
// blob is allocated by the .so itself (cudaMalloc) and is not included; see cuda_backend.h for totals.
struct MemoryStats {
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;
};
MemoryStats memory_stats();
void reset_peak_memory();

// Message of the last shim call that returned AOTI_TORCH_FAILURE on this thread ("" if none).
const std::string& last_error();

// Test hook: how many tensor handles share this handle's storage.
long storage_use_count(AtenTensorHandle t);

}  // namespace tq::shim

// Our tensor. AtenTensorHandle is a pointer to this. sizes/strides live in vectors owned by the handle,
// so the pointers returned by aoti_torch_get_sizes/get_strides stay valid while the handle lives.
struct AtenTensorOpaque {
  std::shared_ptr<tq::shim::Storage> storage;
  int64_t storage_offset = 0;  // in elements
  int32_t dtype = tq::shim::kFloat32;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;

  int64_t numel() const;
  bool is_contiguous() const;
  bool is_non_overlapping_and_dense() const;
  // Number of elements from data_ptr() to one past the furthest element the strides can reach.
  int64_t span() const;
  void* data_ptr() const;
};

// ----------------------------------------------------------------------------------------------
// The C ABI (see torch/csrc/inductor/aoti_torch/c/shim.h for the contract of each function).
// ----------------------------------------------------------------------------------------------
#define TQ_SHIM_API __attribute__((visibility("default")))
extern "C" {
TQ_SHIM_API int32_t aoti_torch_device_type_cpu();
TQ_SHIM_API int32_t aoti_torch_device_type_cuda();
TQ_SHIM_API int32_t aoti_torch_dtype_float8_e5m2();
TQ_SHIM_API int32_t aoti_torch_dtype_float8_e4m3fn();
TQ_SHIM_API int32_t aoti_torch_dtype_float8_e5m2fnuz();
TQ_SHIM_API int32_t aoti_torch_dtype_float8_e4m3fnuz();
TQ_SHIM_API int32_t aoti_torch_dtype_bfloat16();
TQ_SHIM_API int32_t aoti_torch_dtype_float16();
TQ_SHIM_API int32_t aoti_torch_dtype_float32();
TQ_SHIM_API int32_t aoti_torch_dtype_float64();
TQ_SHIM_API int32_t aoti_torch_dtype_uint8();
TQ_SHIM_API int32_t aoti_torch_dtype_uint16();
TQ_SHIM_API int32_t aoti_torch_dtype_uint32();
TQ_SHIM_API int32_t aoti_torch_dtype_uint64();
TQ_SHIM_API int32_t aoti_torch_dtype_int8();
TQ_SHIM_API int32_t aoti_torch_dtype_int16();
TQ_SHIM_API int32_t aoti_torch_dtype_int32();
TQ_SHIM_API int32_t aoti_torch_dtype_int64();
TQ_SHIM_API int32_t aoti_torch_dtype_bool();
TQ_SHIM_API int32_t aoti_torch_dtype_complex64();
TQ_SHIM_API int32_t aoti_torch_dtype_complex128();
TQ_SHIM_API size_t aoti_torch_dtype_element_size(int32_t dtype);
TQ_SHIM_API int32_t aoti_torch_layout_strided();
TQ_SHIM_API int32_t aoti_torch_memory_format_contiguous_format();
TQ_SHIM_API int32_t aoti_torch_memory_format_preserve_format();

TQ_SHIM_API bool aoti_torch_grad_mode_is_enabled();
TQ_SHIM_API void aoti_torch_grad_mode_set_enabled(bool enabled);

TQ_SHIM_API AOTITorchError aoti_torch_create_tensor_from_blob(void* data, int64_t ndim, const int64_t* sizes_ptr,
                                                             const int64_t* strides_ptr, int64_t storage_offset,
                                                             int32_t dtype, int32_t device_type,
                                                             int32_t device_index, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_create_tensor_from_blob_v2(
    void* data, int64_t ndim, const int64_t* sizes_ptr, const int64_t* strides_ptr, int64_t storage_offset,
    int32_t dtype, int32_t device_type, int32_t device_index, AtenTensorHandle* ret, int32_t layout,
    const uint8_t* opaque_metadata, int64_t opaque_metadata_size);
TQ_SHIM_API AOTITorchError aoti_torch_empty_strided(int64_t ndim, const int64_t* sizes_ptr,
                                                   const int64_t* strides_ptr, int32_t dtype, int32_t device_type,
                                                   int32_t device_index, AtenTensorHandle* ret_new_tensor);
TQ_SHIM_API AOTITorchError aoti_torch_delete_tensor_object(AtenTensorHandle tensor);
TQ_SHIM_API AOTITorchError aoti_torch_new_tensor_handle(AtenTensorHandle orig_handle, AtenTensorHandle* new_handle);
TQ_SHIM_API AOTITorchError aoti_torch__reinterpret_tensor(AtenTensorHandle self, int64_t ndim,
                                                         const int64_t* sizes_ptr, const int64_t* strides_ptr,
                                                         int64_t storage_offset, AtenTensorHandle* ret_new_tensor);
TQ_SHIM_API AOTITorchError aoti_torch_as_strided(AtenTensorHandle self, const int64_t* sizes_ptr,
                                                const int64_t* strides_ptr, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch__alloc_from_pool(AtenTensorHandle self, int64_t offset_bytes, int32_t dtype,
                                                      int64_t ndim, const int64_t* sizes_ptr,
                                                      const int64_t* strides_ptr, AtenTensorHandle* ret_new_tensor);

TQ_SHIM_API AOTITorchError aoti_torch_get_data_ptr(AtenTensorHandle tensor, void** ret_data_ptr);
TQ_SHIM_API AOTITorchError aoti_torch_get_storage_size(AtenTensorHandle tensor, int64_t* ret_size);
TQ_SHIM_API AOTITorchError aoti_torch_get_dim(AtenTensorHandle tensor, int64_t* ret_dim);
TQ_SHIM_API AOTITorchError aoti_torch_get_numel(AtenTensorHandle tensor, int64_t* ret_numel);
TQ_SHIM_API AOTITorchError aoti_torch_get_sizes(AtenTensorHandle tensor, int64_t** ret_sizes);
TQ_SHIM_API AOTITorchError aoti_torch_get_size(AtenTensorHandle tensor, int64_t d, int64_t* ret_size);
TQ_SHIM_API AOTITorchError aoti_torch_get_strides(AtenTensorHandle tensor, int64_t** ret_strides);
TQ_SHIM_API AOTITorchError aoti_torch_get_stride(AtenTensorHandle tensor, int64_t d, int64_t* ret_stride);
TQ_SHIM_API AOTITorchError aoti_torch_get_dtype(AtenTensorHandle tensor, int32_t* ret_dtype);
TQ_SHIM_API AOTITorchError aoti_torch_get_device_type(AtenTensorHandle tensor, int32_t* ret_device_type);
TQ_SHIM_API AOTITorchError aoti_torch_get_device_index(AtenTensorHandle tensor, int32_t* ret_device_index);
TQ_SHIM_API AOTITorchError aoti_torch_get_layout(AtenTensorHandle tensor, int32_t* ret_layout);
TQ_SHIM_API AOTITorchError aoti_torch_get_storage_offset(AtenTensorHandle tensor, int64_t* ret_storage_offset);
TQ_SHIM_API AOTITorchError aoti_torch_is_contiguous(AtenTensorHandle tensor, bool* ret_is_contiguous);
TQ_SHIM_API AOTITorchError aoti_torch_is_defined(AtenTensorHandle tensor, bool* ret_is_defined);

TQ_SHIM_API AOTITorchError aoti_torch_copy_(AtenTensorHandle self, AtenTensorHandle src, int32_t non_blocking);
TQ_SHIM_API AOTITorchError aoti_torch_tensor_copy_(AtenTensorHandle src, AtenTensorHandle dst);
TQ_SHIM_API AOTITorchError aoti_torch_assign_tensors_out(AtenTensorHandle src, AtenTensorHandle* ret_dst);
TQ_SHIM_API AOTITorchError aoti_torch_clone(AtenTensorHandle self, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_clone_preserve_strides(AtenTensorHandle self, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_zero_(AtenTensorHandle self);
TQ_SHIM_API AOTITorchError aoti_torch_item_int64(AtenTensorHandle tensor, int64_t* ret_value);
TQ_SHIM_API AOTITorchError aoti_torch_item_int32(AtenTensorHandle tensor, int32_t* ret_value);
TQ_SHIM_API AOTITorchError aoti_torch_item_float32(AtenTensorHandle tensor, float* ret_value);
TQ_SHIM_API AOTITorchError aoti_torch_item_bool(AtenTensorHandle tensor, bool* ret_value);
TQ_SHIM_API AOTITorchError aoti_torch_scalar_to_tensor_int64(int64_t value, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_scalar_to_tensor_int32(int32_t value, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_scalar_to_tensor_float32(float value, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_scalar_to_tensor_bool(bool value, AtenTensorHandle* ret);
TQ_SHIM_API AOTITorchError aoti_torch_check_inf_and_nan(const char* tensor_name, AtenTensorHandle tensor);

TQ_SHIM_API AOTITorchError aoti_torch_create_cuda_guard(int32_t device_index, CUDAGuardHandle* ret_guard);
TQ_SHIM_API AOTITorchError aoti_torch_delete_cuda_guard(CUDAGuardHandle guard);
TQ_SHIM_API AOTITorchError aoti_torch_cuda_guard_set_index(CUDAGuardHandle guard, int32_t device_index);
TQ_SHIM_API AOTITorchError aoti_torch_create_cuda_stream_guard(void* stream, int32_t device_index,
                                                              CUDAStreamGuardHandle* ret_guard);
TQ_SHIM_API AOTITorchError aoti_torch_delete_cuda_stream_guard(CUDAStreamGuardHandle guard);
TQ_SHIM_API AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
TQ_SHIM_API AOTITorchError aoti_torch_create_device_guard(int32_t device_index, DeviceGuardHandle* ret_guard);
TQ_SHIM_API AOTITorchError aoti_torch_delete_device_guard(DeviceGuardHandle guard);
TQ_SHIM_API AOTITorchError aoti_torch_device_guard_set_index(DeviceGuardHandle guard, int32_t device_index);
TQ_SHIM_API AOTITorchError aoti_torch_get_current_device_index(int32_t* ret_device_index);
TQ_SHIM_API AOTITorchError aoti_torch_cuda_caching_allocator_raw_alloc(uint64_t nbytes, void** ret_ptr);
TQ_SHIM_API AOTITorchError aoti_torch_cuda_caching_allocator_raw_delete(void* ptr);

TQ_SHIM_API AOTITorchError aoti_torch_proxy_executor_call_function(AOTIProxyExecutorHandle proxy_executor,
                                                                  int extern_node_index, int num_ints,
                                                                  int64_t* flatten_int_args, int num_tensors,
                                                                  AtenTensorHandle* flatten_tensor_args);
TQ_SHIM_API void aoti_torch_check(bool cond, const char* func, const char* file, uint32_t line, const char* msg);
TQ_SHIM_API void aoti_torch_warn(const char* func, const char* file, uint32_t line, const char* msg);
}  // extern "C"
