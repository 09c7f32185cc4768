// Imports exactly the aoti_torch_* symbols that the AOTI .so of a tiny probe program (a triton_op and a
// uint8 mutable buffer, torch 2.11 / executorch 1.2 on the GPU host) was seen to need, so
// check_shims.sh proves tq-runner covers that set. Real models need more: run check_shims.sh on them.
#include <cstdint>

#define IMPORTS(X)                                                                                     \
  X(aoti_torch_clone) X(aoti_torch_clone_preserve_strides) X(aoti_torch_create_cuda_stream_guard)       \
  X(aoti_torch_delete_cuda_stream_guard) X(aoti_torch_create_tensor_from_blob)                          \
  X(aoti_torch_create_tensor_from_blob_v2) X(aoti_torch_delete_tensor_object) X(aoti_torch_device_type_cpu) \
  X(aoti_torch_device_type_cuda) X(aoti_torch_dtype_bfloat16) X(aoti_torch_dtype_float32)               \
  X(aoti_torch_dtype_int64) X(aoti_torch_dtype_uint8) X(aoti_torch_empty_strided) X(aoti_torch_get_data_ptr) \
  X(aoti_torch_get_device_type) X(aoti_torch_get_dtype) X(aoti_torch_get_sizes) X(aoti_torch_get_strides) \
  X(aoti_torch_get_storage_offset) X(aoti_torch_get_storage_size) X(aoti_torch_grad_mode_is_enabled)     \
  X(aoti_torch_grad_mode_set_enabled) X(aoti_torch_layout_strided) X(aoti_torch_new_tensor_handle)      \
  X(aoti_torch_warn)

#define DECLARE(name) void name();
#define ADDRESS(name) reinterpret_cast<void*>(&name),
extern "C" {
IMPORTS(DECLARE)
__attribute__((visibility("default"))) void* fake_aoti_probe_imports[] = {IMPORTS(ADDRESS) nullptr};
}
