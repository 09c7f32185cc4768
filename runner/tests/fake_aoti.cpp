// Stands in for an AOTInductor model .so: it knows only the C ABI and leaves every aoti_torch_* symbol
// undefined, to be resolved from the host executable when test_shims dlopens it with RTLD_LOCAL, the
// way the delegate loads real models. Also fed to check_shims.sh as a .so whose imports are all met.
#include <cstddef>
#include <cstdint>

extern "C" {
struct AtenTensorOpaque;
using AtenTensorHandle = AtenTensorOpaque*;
using AOTITorchError = int32_t;
int32_t aoti_torch_device_type_cpu();
int32_t aoti_torch_dtype_float32();
int32_t aoti_torch_dtype_uint8();
AOTITorchError aoti_torch_create_tensor_from_blob(void*, int64_t, const int64_t*, const int64_t*, int64_t, int32_t,
                                                  int32_t, int32_t, AtenTensorHandle*);
AOTITorchError aoti_torch_get_sizes(AtenTensorHandle, int64_t**);
AOTITorchError aoti_torch_get_strides(AtenTensorHandle, int64_t**);
AOTITorchError aoti_torch_get_data_ptr(AtenTensorHandle, void**);
AOTITorchError aoti_torch_new_tensor_handle(AtenTensorHandle, AtenTensorHandle*);
AOTITorchError aoti_torch_delete_tensor_object(AtenTensorHandle);

// Returns 0 when every shim call behaved, else the number of the failed check.
__attribute__((visibility("default"))) int fake_aoti_probe() {
  static float buf[16];
  const int64_t sizes[2] = {2, 3}, strides[2] = {3, 1};
  AtenTensorHandle t = nullptr, t2 = nullptr;
  if (aoti_torch_create_tensor_from_blob(buf, 2, sizes, strides, 1, aoti_torch_dtype_float32(),
                                         aoti_torch_device_type_cpu(), 0, &t) != 0)
    return 1;
  int64_t *s = nullptr, *st = nullptr;
  void* p = nullptr;
  if (aoti_torch_get_sizes(t, &s) || s[0] != 2 || s[1] != 3) return 2;
  if (aoti_torch_get_strides(t, &st) || st[0] != 3 || st[1] != 1) return 3;
  if (aoti_torch_get_data_ptr(t, &p) || p != buf + 1) return 4;
  if (aoti_torch_new_tensor_handle(t, &t2)) return 5;
  if (aoti_torch_delete_tensor_object(t)) return 6;
  if (aoti_torch_get_data_ptr(t2, &p) || p != buf + 1) return 7;
  if (aoti_torch_delete_tensor_object(t2)) return 8;
  if (aoti_torch_dtype_uint8() != 0) return 9;
  return 0;
}
}
