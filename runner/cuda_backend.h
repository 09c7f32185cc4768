// ExecuTorch delegate "CudaBackend": runs the AOTInductor .so that executorch's CudaPartitioner put in a
// program, using our aoti_torch_* shims instead of libtorch.
//
// Per lowered method (e.g. `prefill`, `decode`): write the .so from the program's named data to a
// private temp file, dlopen it, create its AOTInductor model container, load its constants from the
// weights blob in the .ptd, and run it on one CUDA stream shared by all methods (so a method always sees
// what the previous one wrote).
//
// Sharing between methods: each method is its own container with its own copy of every weight and
// mutable buffer. The delegate keeps the constants already loaded (by original FQN; one pool per process,
// so one program at a time, emptied when its last method is destroyed); a
// later method whose constants are all known is pointed at them with
// AOTInductorModelContainerUpdateUserManagedConstantBufferPairs and never loads its own blob, so it adds
// no weight memory and reads and writes the same KV caches. Lifted tensor constants are shared only if
// their bytes are identical. A method with constants nobody has loaded yet loads its whole blob (AOTI
// allocates it in one piece) and still shares what it can; load_reports() says which case happened.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>
#include <vector>

#include <executorch/runtime/core/error.h>

namespace tq::cuda {

// Registers "CudaBackend" with ExecuTorch, and a CUDA DeviceAllocator for programs that plan delegate
// I/O on the device (executorch >= 1.4). Idempotent.
executorch::runtime::Error register_backend();

// Makes the CUDA driver's symbols globally visible (dlopen libcuda.so.1 RTLD_GLOBAL): the model .so's
// resolve cuModuleLoadData/cuLaunchKernel from the process, and tq-runner does not link libcuda so that
// it builds without a driver and can report a missing one cleanly. Returns "" or an error message.
std::string load_cuda_driver();

// FQNs of mutable buffers the program says must be shared by all methods (its metadata). Loading a
// method fails if it has one of these but could not point it at the copy another method already owns.
void set_required_shared_buffers(std::vector<std::string> fqns);
// FQNs of every constant some loaded method owns (the shared pool).
std::vector<std::string> shared_constant_fqns();

// What the delegate last failed on, and what is to blame: the program (.pte: its model .so), the
// weights file (.ptd: missing key, blob too small) or the device (CUDA errors, out of memory).
struct DelegateError {
  enum Culprit { kProgram, kWeights, kDevice };
  std::string message;
  Culprit culprit = kProgram;
};
const DelegateError& last_error();
void clear_last_error();

// One line per loaded method.
struct LoadReport {
  std::string method;
  size_t num_constants = 0;   // non-folded constants of the container
  size_t num_shared = 0;      // pointed at another method's copy
  bool loaded_own_blob = false;
  size_t blob_bytes = 0;      // bytes of its weights blob (allocated on the GPU iff loaded_own_blob)
  size_t shared_bytes = 0;    // bytes it reuses from other methods
};
std::vector<LoadReport> load_reports();

// The stream every method runs on (nullptr before the first method is loaded).
cudaStream_t stream();

// Named-data keys of a method's .so and weights blob. executorch 1.2/1.3 write `<method>_so_blob` and
// `<method>_weights_blob` and leave the processed bytes empty; 1.4+ key by content hash and store
// "so_key\nweights_key" as the processed bytes. Exposed for tests.
struct BlobKeys {
  std::string so_key;
  std::string weights_key;
};
BlobKeys resolve_blob_keys(std::string_view processed, std::string_view method_name);

}  // namespace tq::cuda
