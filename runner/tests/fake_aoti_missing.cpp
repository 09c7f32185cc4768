// A model-like .so importing a shim tq-runner does not implement (a cuBLAS fallback op), so
// check_shims.sh must fail and name it.
#include <cstdint>

extern "C" {
struct AtenTensorOpaque;
using AtenTensorHandle = AtenTensorOpaque*;
int32_t aoti_torch_dtype_bfloat16();
int32_t aoti_torch_cuda_mm_out(AtenTensorHandle out, AtenTensorHandle self, AtenTensorHandle mat2);

__attribute__((visibility("default"))) int fake_aoti_missing_probe(AtenTensorHandle a) {
  return aoti_torch_dtype_bfloat16() + aoti_torch_cuda_mm_out(a, a, a);
}
}
