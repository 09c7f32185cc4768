// The C ABI between an AOTInductor model .so and its host process, declared here rather than taken
// from torch headers: the runner must not include or link libtorch.
//
// Sources: torch/csrc/inductor/aoti_torch/c/{macros.h,shim.h} and torch/csrc/inductor/aoti_runtime/
// {utils.h,interface.h} of torch 2.11 (the .so's are compiled there) checked against 2.13 (this dev
// machine). Differences 2.11 -> 2.13 that matter here: 2.13 adds
// AOTInductorModelContainerExtractConstantsMapEntries and ...CreateWithExternalConstants (unused: we
// stick to the 2.11 set), and its user-managed constant update takes a new handle via
// aoti_torch_new_tensor_handle instead of borrowing the caller's (both are fine with our refcounted
// storage as long as the lender outlives the borrower, which the delegate guarantees).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// ---- torch/csrc/inductor/aoti_torch/c/macros.h
struct AtenTensorOpaque;  // defined by us in shims.h: our tensor type
using AtenTensorHandle = AtenTensorOpaque*;
struct AOTIProxyExecutorOpaque;
using AOTIProxyExecutorHandle = AOTIProxyExecutorOpaque*;
using AOTITorchError = int32_t;
#define AOTI_TORCH_SUCCESS 0
#define AOTI_TORCH_FAILURE 1

// ---- shim.h guard handles (opaque to the .so; ours are defined in shims.cpp)
struct CUDAGuardOpaque;
using CUDAGuardHandle = CUDAGuardOpaque*;
struct CUDAStreamGuardOpaque;
using CUDAStreamGuardHandle = CUDAStreamGuardOpaque*;
struct DeviceGuardOpaque;
using DeviceGuardHandle = DeviceGuardOpaque*;

// ---- aoti_runtime/utils.h, interface.h
using AOTIRuntimeError = int32_t;
#define AOTI_RUNTIME_SUCCESS 0
#define AOTI_RUNTIME_FAILURE 1

struct AOTInductorModelContainerOpaque;
using AOTInductorModelContainerHandle = AOTInductorModelContainerOpaque*;
struct AOTInductorStreamOpaque;
using AOTInductorStreamHandle = AOTInductorStreamOpaque*;
struct AOTInductorConstantMap;  // really a std::unordered_map<std::string, AtenTensorHandle>*
using AOTInductorConstantMapHandle = AOTInductorConstantMap*;

struct AOTInductorConstantMapEntry {
  const char* name;
  AtenTensorHandle handle;
};

// Function pointer types of the container API, looked up with dlsym in each model .so.
using AOTInductorModelContainerCreateWithDeviceFn = AOTIRuntimeError (*)(
    AOTInductorModelContainerHandle* container_handle, size_t num_models, const char* device_str,
    const char* cubin_dir);
using AOTInductorModelContainerDeleteFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle);
using AOTInductorModelContainerGetNumInputsFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t*);
using AOTInductorModelContainerGetNumOutputsFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t*);
// Input handles are stolen (the model deletes them through aoti_torch_delete_tensor_object); output
// handles are written by the model and owned by the caller afterwards.
using AOTInductorModelContainerRunFn = AOTIRuntimeError (*)(
    AOTInductorModelContainerHandle container_handle, AtenTensorHandle* input_handles, size_t num_inputs,
    AtenTensorHandle* output_handles, size_t num_outputs, AOTInductorStreamHandle stream_handle,
    AOTIProxyExecutorHandle proxy_executor_handle);
// No "Container" in the name; copies every constant from the host bytes of the weights blob.
using AOTInductorModelUpdateConstantsFromBlobFn = AOTIRuntimeError (*)(
    AOTInductorModelContainerHandle container_handle, const uint8_t* weight_blob_ptr);
using AOTInductorModelContainerGetNumConstantsFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t*);
using AOTInductorModelContainerGetConstantNameFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t,
                                                                        const char**);
using AOTInductorModelContainerGetConstantOriginalFQNFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle,
                                                                               size_t, const char**);
using AOTInductorModelContainerGetConstantFromFoldedFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle,
                                                                              size_t, bool*);
using AOTInductorModelContainerGetConstantTypeFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t,
                                                                        int32_t*);
using AOTInductorModelContainerGetConstantDtypeFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle, size_t,
                                                                         int32_t*);
using AOTInductorModelContainerGetConstantDataSizeFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle,
                                                                            size_t, size_t*);
// Fills a std::unordered_map<std::string, AtenTensorHandle> keyed by original FQN (C++ ABI: same
// libstdc++ on both sides, which holds for a .so built by g++ on Linux).
using AOTInductorModelContainerExtractConstantsMapFn = AOTIRuntimeError (*)(AOTInductorModelContainerHandle,
                                                                            AOTInductorConstantMapHandle, bool);
// Keys are the container's internal constant names (GetConstantName), not FQNs.
using AOTInductorModelContainerUpdateUserManagedConstantBufferPairsFn = AOTIRuntimeError (*)(
    AOTInductorModelContainerHandle container_handle, const AOTInductorConstantMapEntry* pairs, size_t num_pairs,
    bool use_inactive, bool validate_full_update);
using AOTInductorGetLastErrorFn = AOTIRuntimeError (*)(const char** error_msg);

}  // extern "C"

// torch::aot_inductor::ConstantType (aoti_runtime/constant_type.h)
namespace tq::aoti {
enum ConstantType : int32_t { kUnknown = 0, kParameter = 1, kBuffer = 2, kTensorConstant = 3, kFoldedConstant = 4 };
}  // namespace tq::aoti
