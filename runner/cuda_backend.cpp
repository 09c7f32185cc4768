// The CudaBackend delegate; see cuda_backend.h for what it does and why.
#include "cuda_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/device_allocator.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/core/named_data_map.h>

#include "aoti_abi.h"
#include "crash_guard.h"
#include "shims.h"

namespace tq::cuda {

using tq::crash_cleanup_file;
using executorch::runtime::ArrayRef;
using executorch::runtime::BackendExecutionContext;
using executorch::runtime::BackendInitContext;
using executorch::runtime::CompileSpec;
using executorch::runtime::DelegateHandle;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::FreeableBuffer;
using executorch::runtime::NamedDataMap;
using executorch::runtime::Result;
using executorch::runtime::Span;

namespace {

// ============================================================================================
// Errors
// ============================================================================================
DelegateError g_error;

Error fail(Error code, std::string message, DelegateError::Culprit culprit = DelegateError::kProgram) {
  g_error.message = std::move(message);
  g_error.culprit = culprit;
  return code;
}
constexpr auto kWeights = DelegateError::kWeights;
constexpr auto kDevice = DelegateError::kDevice;

std::string cuda_msg(cudaError_t e) { return cudaGetErrorString(e); }

// ============================================================================================
// Per-method state
// ============================================================================================
struct Method {
  std::string name;
  void* so = nullptr;
  AOTInductorModelContainerHandle container = nullptr;
  size_t num_inputs = 0, num_outputs = 0;

  AOTInductorModelContainerCreateWithDeviceFn create = nullptr;
  AOTInductorModelContainerDeleteFn del = nullptr;
  AOTInductorModelContainerGetNumInputsFn num_in = nullptr;
  AOTInductorModelContainerGetNumOutputsFn num_out = nullptr;
  AOTInductorModelContainerRunFn run = nullptr;
  AOTInductorModelUpdateConstantsFromBlobFn from_blob = nullptr;
  AOTInductorModelContainerGetNumConstantsFn num_constants = nullptr;
  AOTInductorModelContainerGetConstantNameFn constant_name = nullptr;
  AOTInductorModelContainerGetConstantOriginalFQNFn constant_fqn = nullptr;
  AOTInductorModelContainerExtractConstantsMapFn extract = nullptr;
  AOTInductorModelContainerUpdateUserManagedConstantBufferPairsFn share = nullptr;
  // Optional (exported by torch 2.11 .so's, but not needed for correctness).
  AOTInductorModelContainerGetConstantFromFoldedFn constant_folded = nullptr;
  AOTInductorModelContainerGetConstantTypeFn constant_type = nullptr;
  AOTInductorModelContainerGetConstantDtypeFn constant_dtype = nullptr;
  AOTInductorModelContainerGetConstantDataSizeFn constant_size = nullptr;
  AOTInductorGetLastErrorFn get_last_error = nullptr;

  // Device copies of host-planned inputs, reused across calls (grown on demand).
  std::vector<std::shared_ptr<shim::Storage>> staging;

  // Lifetime: a method whose container points at another method's constants must be torn down first.
  std::set<Method*> lenders;
  int borrowers = 0;
  bool destroyed = false;

  std::string model_error() const {
    const char* m = nullptr;
    std::string out;
    if (get_last_error && get_last_error(&m) == AOTI_RUNTIME_SUCCESS && m && *m) out = m;
    if (!shim::last_error().empty()) out += (out.empty() ? "" : "; ") + shim::last_error();
    return out.empty() ? "no details" : out;
  }
};

// A constant some method owns, offered to later methods of the same program.
struct SharedConstant {
  AtenTensorHandle handle = nullptr;
  Method* owner = nullptr;
  int32_t dtype = -1;
  int64_t nbytes = -1;
  int32_t type = aoti::kUnknown;
  std::string blob_key;  // where its initial bytes are (for comparing lifted tensor constants)
  int64_t blob_offset = -1;
};

std::mutex g_mu;
// One pool per process: the NamedDataMap executorch passes differs per method, so it cannot identify the
// program. tq-runner loads one program at a time; the pool empties when its last method is destroyed.
std::unordered_map<std::string, SharedConstant> g_shared;
std::vector<std::string> g_required_shared;
std::vector<LoadReport> g_reports;
cudaStream_t g_stream = nullptr;
int g_live_methods = 0;

// ============================================================================================
// Loading helpers
// ============================================================================================
std::string temp_dir() {
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

// Writes the .so to a private file (mkstemp: unique, mode 0600), dlopens it and unlinks it right away:
// the mapping keeps it alive and nothing is left behind, even if the process dies later.
void* load_so(const void* data, size_t size, std::string* err) {
  std::string path = temp_dir() + "/tq-aoti-XXXXXX";
  int fd = mkstemp(path.data());
  if (fd < 0) {
    *err = "cannot create a temp file in " + temp_dir() + ": " + std::strerror(errno);
    return nullptr;
  }
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      *err = "cannot write " + path + ": " + std::strerror(errno);
      close(fd);
      unlink(path.c_str());
      return nullptr;
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  close(fd);
  // RTLD_LOCAL keeps each model's own symbols apart; the shims come from the executable (global scope).
  // RTLD_NOW resolves every import here, so a shim we lack is named now instead of killing the process
  // (ld.so exits 127) at its first call. TQ_RUNNER_LAZY_SHIMS=1 binds lazily instead, for a model that
  // references a shim it never calls.
  bool lazy = std::getenv("TQ_RUNNER_LAZY_SHIMS") != nullptr;
  crash_cleanup_file(path.c_str());  // a damaged .so may crash the loader: remove the file even then
  void* so = dlopen(path.c_str(), (lazy ? RTLD_LAZY : RTLD_NOW) | RTLD_LOCAL);
  if (!so) {
    const char* e = dlerror();
    std::string why = e ? e : "unknown error";
    // dlerror names our private temp file; the user knows the model by its method instead.
    size_t at = why.find(path + ": ");
    if (at != std::string::npos) why.erase(at, path.size() + 2);
    *err = "cannot load the model .so: " + why;
    if (why.find("undefined symbol: aoti_torch_") != std::string::npos)
      *err += " (a shim tq-runner lacks: see runner/check_shims.sh)";
  }
  unlink(path.c_str());
  crash_cleanup_file(nullptr);
  return so;
}

template <typename F>
bool sym(void* so, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(so, name));
  return *out != nullptr;
}

Error bind_symbols(Method& m) {
  struct Req {
    const char* name;
    bool ok;
  };
  Req required[] = {
      {"AOTInductorModelContainerCreateWithDevice", sym(m.so, "AOTInductorModelContainerCreateWithDevice", &m.create)},
      {"AOTInductorModelContainerDelete", sym(m.so, "AOTInductorModelContainerDelete", &m.del)},
      {"AOTInductorModelContainerGetNumInputs", sym(m.so, "AOTInductorModelContainerGetNumInputs", &m.num_in)},
      {"AOTInductorModelContainerGetNumOutputs", sym(m.so, "AOTInductorModelContainerGetNumOutputs", &m.num_out)},
      {"AOTInductorModelContainerRun", sym(m.so, "AOTInductorModelContainerRun", &m.run)},
      {"AOTInductorModelUpdateConstantsFromBlob", sym(m.so, "AOTInductorModelUpdateConstantsFromBlob", &m.from_blob)},
      {"AOTInductorModelContainerGetNumConstants",
       sym(m.so, "AOTInductorModelContainerGetNumConstants", &m.num_constants)},
      {"AOTInductorModelContainerGetConstantName",
       sym(m.so, "AOTInductorModelContainerGetConstantName", &m.constant_name)},
      {"AOTInductorModelContainerGetConstantOriginalFQN",
       sym(m.so, "AOTInductorModelContainerGetConstantOriginalFQN", &m.constant_fqn)},
      {"AOTInductorModelContainerExtractConstantsMap",
       sym(m.so, "AOTInductorModelContainerExtractConstantsMap", &m.extract)},
      {"AOTInductorModelContainerUpdateUserManagedConstantBufferPairs",
       sym(m.so, "AOTInductorModelContainerUpdateUserManagedConstantBufferPairs", &m.share)},
  };
  for (const Req& r : required)
    if (!r.ok)
      return fail(Error::DelegateInvalidCompatibility,
                  "model .so of method '" + m.name + "' does not export " + r.name + " (made by an older torch?)");
  sym(m.so, "AOTInductorModelContainerGetConstantFromFolded", &m.constant_folded);
  sym(m.so, "AOTInductorModelContainerGetConstantType", &m.constant_type);
  sym(m.so, "AOTInductorModelContainerGetConstantDtype", &m.constant_dtype);
  sym(m.so, "AOTInductorModelContainerGetConstantDataSize", &m.constant_size);
  sym(m.so, "AOTInductorGetLastError", &m.get_last_error);
  return Error::Ok;
}

struct ConstantInfo {
  std::string name, fqn;
  int32_t type = aoti::kUnknown;
  int32_t dtype = -1;
  int64_t nbytes = -1;
  int64_t blob_offset = -1;
};

// Non-folded constants of the container, in blob order, with their byte offset in the weights blob
// (AOTI's load_constants reads them back to back; folded constants are computed, not stored).
std::vector<ConstantInfo> list_constants(Method& m) {
  std::vector<ConstantInfo> out;
  size_t n = 0;
  if (m.num_constants(m.container, &n) != AOTI_RUNTIME_SUCCESS) return out;
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    bool folded = false;
    if (m.constant_folded) m.constant_folded(m.container, i, &folded);
    if (folded) continue;
    ConstantInfo c;
    const char* s = nullptr;
    if (m.constant_name(m.container, i, &s) == AOTI_RUNTIME_SUCCESS && s) c.name = s;
    s = nullptr;
    if (m.constant_fqn(m.container, i, &s) == AOTI_RUNTIME_SUCCESS && s) c.fqn = s;
    if (m.constant_type) m.constant_type(m.container, i, &c.type);
    if (m.constant_dtype) m.constant_dtype(m.container, i, &c.dtype);
    size_t sz = 0;
    if (m.constant_size && m.constant_size(m.container, i, &sz) == AOTI_RUNTIME_SUCCESS) {
      c.nbytes = static_cast<int64_t>(sz);
      c.blob_offset = offset;
      offset += c.nbytes;
    }
    out.push_back(std::move(c));
  }
  return out;
}

bool is_lifted_constant(const ConstantInfo& c) {
  if (c.type == aoti::kTensorConstant) return true;
  if (c.type != aoti::kUnknown) return false;
  return c.fqn.rfind("_tensor_constant", 0) == 0 || c.fqn.rfind("_lifted_tensor_constant", 0) == 0;
}

// Whether `c` of this method may use `s`, the copy another method owns.
bool can_share(const ConstantInfo& c, const SharedConstant& s, const NamedDataMap* ndm, const void* my_blob) {
  if (c.dtype >= 0 && s.dtype >= 0 && c.dtype != s.dtype) return false;
  if (c.nbytes >= 0 && s.nbytes >= 0 && c.nbytes != s.nbytes) return false;
  if (!is_lifted_constant(c)) return true;  // same parameter/buffer of the same module
  // Lifted tensor constants are numbered per graph, so equal names need not mean equal values.
  if (c.blob_offset < 0 || s.blob_offset < 0 || c.nbytes < 0 || !my_blob) return false;
  auto other = ndm->get_data(s.blob_key);
  if (!other.ok() || static_cast<int64_t>(other->size()) < s.blob_offset + c.nbytes) return false;
  return std::memcmp(static_cast<const char*>(my_blob) + c.blob_offset,
                     static_cast<const char*>(other->data()) + s.blob_offset, static_cast<size_t>(c.nbytes)) == 0;
}

// Loads the method's constants: reuse what other methods of the program own, load the blob only if
// something is left. Called with g_mu held.
Error load_constants(Method& m, const NamedDataMap* ndm, const std::string& weights_key) {
  auto blob = ndm->get_data(weights_key);
  if (!blob.ok())
    return fail(Error::NotFound, "weights blob '" + weights_key + "' of method '" + m.name +
                                     "' is not in the weights file (wrong or missing .ptd?)", kWeights);
  std::vector<ConstantInfo> consts = list_constants(m);
  int64_t need = 0;
  for (const auto& c : consts) need += std::max<int64_t>(c.nbytes, 0);
  if (need > static_cast<int64_t>(blob->size()))
    return fail(Error::InvalidProgram, "weights blob '" + weights_key + "' holds " + std::to_string(blob->size()) +
                                           " bytes but method '" + m.name + "' needs " + std::to_string(need) +
                                           " (weights file from another export?)", kWeights);

  auto& pool = g_shared;
  std::vector<AOTInductorConstantMapEntry> pairs;
  LoadReport report;
  report.method = m.name;
  report.num_constants = consts.size();
  report.blob_bytes = blob->size();
  std::set<std::string> required(g_required_shared.begin(), g_required_shared.end());
  for (const auto& c : consts) {
    auto it = c.fqn.empty() ? pool.end() : pool.find(c.fqn);
    if (it != pool.end() && can_share(c, it->second, ndm, blob->data())) {
      pairs.push_back({c.name.c_str(), it->second.handle});
      if (m.lenders.insert(it->second.owner).second) it->second.owner->borrowers++;
      report.shared_bytes += static_cast<size_t>(std::max<int64_t>(c.nbytes, 0));
    } else if (it != pool.end() && required.count(c.fqn)) {
      return fail(Error::InvalidProgram, "buffer '" + c.fqn + "' must be shared between methods but method '" +
                                             m.name + "' has it with a different dtype or size");
    }
  }
  report.num_shared = pairs.size();

  if (pairs.size() < consts.size() || consts.empty()) {
    // Something is not loaded yet: AOTI loads a container's blob all at once.
    if (m.from_blob(m.container, static_cast<const uint8_t*>(blob->data())) != AOTI_RUNTIME_SUCCESS)
      return fail(Error::Internal, "loading the weights of method '" + m.name + "' failed: " + m.model_error(), kDevice);
    report.loaded_own_blob = true;
  }
  if (!pairs.empty() &&
      m.share(m.container, pairs.data(), pairs.size(), /*use_inactive=*/false, /*validate_full_update=*/false) !=
          AOTI_RUNTIME_SUCCESS)
    return fail(Error::Internal, "pointing method '" + m.name + "' at shared constants failed: " + m.model_error());

  if (report.loaded_own_blob) {
    // Offer this method's own constants to the methods loaded after it.
    std::unordered_map<std::string, AtenTensorHandle> mine;
    if (m.extract(m.container, reinterpret_cast<AOTInductorConstantMapHandle>(&mine), false) !=
        AOTI_RUNTIME_SUCCESS)
      return fail(Error::Internal, "reading the constants of method '" + m.name + "' failed: " + m.model_error());
    for (const auto& c : consts) {
      if (c.fqn.empty() || pool.count(c.fqn)) continue;
      auto h = mine.find(c.fqn);
      if (h == mine.end()) continue;
      SharedConstant s;
      s.handle = h->second;
      s.owner = &m;
      s.dtype = c.dtype >= 0 ? c.dtype : h->second->dtype;
      s.nbytes = c.nbytes;
      s.type = c.type;
      s.blob_key = weights_key;
      s.blob_offset = c.blob_offset;
      pool.emplace(c.fqn, s);
    }
  }
  blob->Free();
  g_reports.push_back(report);
  return Error::Ok;
}

// Sets the shim's current stream for the duration of a scope.
struct StreamScope {
  cudaStream_t prev;
  explicit StreamScope(cudaStream_t s) : prev(shim::current_stream()) { shim::set_current_stream(s); }
  ~StreamScope() { shim::set_current_stream(prev); }
};

// Tears a method down once nothing borrows its constants; then releases what it borrowed.
void release(Method* m) {
  if (!m->destroyed || m->borrowers > 0) return;
  for (auto it = g_shared.begin(); it != g_shared.end();)
    it = it->second.owner == m ? g_shared.erase(it) : std::next(it);
  {
    // Frees below are stream-ordered on our stream, after everything queued on it.
    StreamScope scope(g_stream);
    if (g_stream) cudaStreamSynchronize(g_stream);
    // TQ_RUNNER_KEEP_CONTAINERS=1 leaves containers and .so's to process exit (escape hatch should a
    // model's teardown misbehave; the OS reclaims everything anyway).
    bool keep = std::getenv("TQ_RUNNER_KEEP_CONTAINERS") != nullptr;
    if (m->container && !keep) m->del(m->container);
    m->staging.clear();
    if (g_stream) cudaStreamSynchronize(g_stream);
    if (m->so && !keep) dlclose(m->so);
  }
  std::set<Method*> lenders = std::move(m->lenders);
  delete m;
  if (--g_live_methods == 0 && g_stream) {
    cudaStreamDestroy(g_stream);
    g_stream = nullptr;
  }
  for (Method* l : lenders) {
    l->borrowers--;
    release(l);
  }
}

std::string spec_string(ArrayRef<CompileSpec> specs, const char* key) {
  for (const CompileSpec& s : specs) {
    if (std::strcmp(s.key, key) != 0) continue;
    std::string v(static_cast<const char*>(s.value.buffer), s.value.nbytes);
    while (!v.empty() && v.back() == '\0') v.pop_back();
    return v;
  }
  return "";
}

bool is_device_tensor(const executorch::aten::Tensor& t) {
  if (t.unsafeGetTensorImpl()->device_type() == executorch::runtime::etensor::DeviceType::CUDA) return true;
  cudaPointerAttributes a{};
  const void* p = t.const_data_ptr();
  if (!p) return false;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error for host pointers on old drivers
    return false;
  }
  return a.type == cudaMemoryTypeDevice;
}

// ============================================================================================
// The backend
// ============================================================================================
class CudaBackend final : public executorch::runtime::BackendInterface {
 public:
  bool is_available() const override {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }

  Result<DelegateHandle*> init(BackendInitContext& context, FreeableBuffer* processed,
                               ArrayRef<CompileSpec> compile_specs) const override {
    std::lock_guard<std::mutex> lk(g_mu);
    std::string method_name = spec_string(compile_specs, "method_name");
    if (method_name.empty() && context.get_method_name()) method_name = context.get_method_name();
    BlobKeys keys = resolve_blob_keys(
        std::string_view(static_cast<const char*>(processed->data()), processed->size()), method_name);
    processed->Free();

    const NamedDataMap* ndm = context.get_named_data_map();
    if (!ndm) return fail(Error::InvalidProgram, "the program carries no named data (not a CudaBackend export?)");
    std::string driver_err = load_cuda_driver();
    if (!driver_err.empty()) return fail(Error::NotSupported, driver_err, kDevice);

    auto m = std::make_unique<Method>();
    m->name = method_name.empty() ? keys.so_key : method_name;
    {
      auto so_blob = ndm->get_data(keys.so_key);
      if (!so_blob.ok())
        return fail(Error::NotFound, "model .so '" + keys.so_key + "' of method '" + m->name + "' is not in the program");
      std::string err;
      m->so = load_so(so_blob->data(), so_blob->size(), &err);
      if (!m->so) return fail(Error::AccessFailed, err);
    }
    struct Cleanup {  // on any failure below: unload what was loaded
      Method* m;
      ~Cleanup() {
        if (!m) return;
        if (m->container && m->del) m->del(m->container);
        if (m->so) dlclose(m->so);
        for (Method* l : m->lenders) l->borrowers--;
      }
    } cleanup{m.get()};
    Error e = bind_symbols(*m);
    if (e != Error::Ok) return e;

    if (!g_stream) {
      cudaError_t ce = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
      if (ce != cudaSuccess) return fail(Error::Internal, "cudaStreamCreate failed: " + cuda_msg(ce), kDevice);
    }
    StreamScope scope(g_stream);
    if (m->create(&m->container, 1, "cuda", nullptr) != AOTI_RUNTIME_SUCCESS || !m->container)
      return fail(Error::Internal, "creating the model container of method '" + m->name + "' failed: " +
                                       m->model_error(), kDevice);
    m->num_in(m->container, &m->num_inputs);
    m->num_out(m->container, &m->num_outputs);
    m->staging.resize(m->num_inputs);

    e = load_constants(*m, ndm, keys.weights_key);
    if (e != Error::Ok) return e;
    cudaError_t ce = cudaStreamSynchronize(g_stream);
    if (ce != cudaSuccess)
      return fail(Error::Internal, "CUDA error while loading method '" + m->name + "': " + cuda_msg(ce), kDevice);

    cleanup.m = nullptr;
    ++g_live_methods;
    return static_cast<DelegateHandle*>(m.release());
  }

  Error execute(BackendExecutionContext&, DelegateHandle* handle, Span<EValue*> args) const override {
    auto* m = static_cast<Method*>(handle);
    if (args.size() != m->num_inputs + m->num_outputs)
      return fail(Error::InvalidArgument, "method '" + m->name + "' expects " + std::to_string(m->num_inputs) +
                                              " inputs and " + std::to_string(m->num_outputs) + " outputs, got " +
                                              std::to_string(args.size()) + " values");
    StreamScope scope(g_stream);

    // Inputs: device tensors are passed as they are; host tensors (executorch 1.2 plans delegate I/O in
    // host memory) are copied into per-input device buffers. Run() takes ownership of the handles.
    std::vector<AtenTensorHandle> inputs(m->num_inputs, nullptr);
    auto free_inputs = [&] {
      for (auto h : inputs)
        if (h) aoti_torch_delete_tensor_object(h);
    };
    for (size_t i = 0; i < m->num_inputs; ++i) {
      if (!args[i]->isTensor()) {
        free_inputs();
        return fail(Error::InvalidArgument, "input " + std::to_string(i) + " of method '" + m->name + "' is not a tensor");
      }
      const auto& t = args[i]->toTensor();
      std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
      std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
      void* data = t.mutable_data_ptr();
      if (!is_device_tensor(t)) {
        auto& st = m->staging[i];
        if (!st || st->nbytes < t.nbytes()) {
          try {
            st = shim::allocate(std::max<size_t>(t.nbytes(), 64), shim::kCUDA, 0);
          } catch (const std::exception& ex) {
            free_inputs();
            return fail(Error::MemoryAllocationFailed, std::string("staging input: ") + ex.what());
          }
        }
        cudaError_t ce = cudaMemcpyAsync(st->data, t.const_data_ptr(), t.nbytes(), cudaMemcpyHostToDevice, g_stream);
        if (ce != cudaSuccess) {
          free_inputs();
          return fail(Error::Internal, "copying input " + std::to_string(i) + " to the GPU failed: " + cuda_msg(ce));
        }
        data = st->data;
      }
      if (aoti_torch_create_tensor_from_blob(data, static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(), 0,
                                             static_cast<int32_t>(t.scalar_type()), shim::kCUDA, 0,
                                             &inputs[i]) != AOTI_TORCH_SUCCESS) {
        free_inputs();
        return fail(Error::InvalidArgument, "input " + std::to_string(i) + ": " + shim::last_error());
      }
    }

    std::vector<AtenTensorHandle> outputs(m->num_outputs, nullptr);
    AOTIRuntimeError rc = m->run(m->container, inputs.data(), inputs.size(), outputs.data(), outputs.size(),
                                 reinterpret_cast<AOTInductorStreamHandle>(g_stream), nullptr);
    auto free_outputs = [&] {
      for (auto h : outputs)
        if (h) aoti_torch_delete_tensor_object(h);
    };
    if (rc != AOTI_RUNTIME_SUCCESS) {
      free_outputs();
      return fail(Error::Internal, "method '" + m->name + "' failed on the GPU: " + m->model_error());
    }

    // Outputs: the model returns handles it allocated; copy each into the tensor executorch planned for
    // it (resizing dynamic shapes), then free the handle (stream-ordered, so after the copy).
    for (size_t i = 0; i < m->num_outputs; ++i) {
      AtenTensorHandle o = outputs[i];
      EValue* ev = args[m->num_inputs + i];
      if (!o || !ev->isTensor()) {
        free_outputs();
        return fail(Error::Internal, "method '" + m->name + "' returned no tensor for output " + std::to_string(i));
      }
      auto& dst = ev->toTensor();
      if (static_cast<int32_t>(dst.scalar_type()) != o->dtype) {
        free_outputs();
        return fail(Error::InvalidProgram, "output " + std::to_string(i) + " of method '" + m->name + "' has dtype " +
                                               std::to_string(o->dtype) + ", the program planned " +
                                               std::to_string(static_cast<int>(dst.scalar_type())));
      }
      std::vector<executorch::aten::SizesType> new_sizes(o->sizes.begin(), o->sizes.end());
      if (executorch::runtime::resize_tensor(dst, {new_sizes.data(), new_sizes.size()}) != Error::Ok) {
        free_outputs();
        return fail(Error::InvalidProgram, "output " + std::to_string(i) + " of method '" + m->name +
                                               "' does not fit the shape the program planned");
      }
      AtenTensorHandle src = o;
      AtenTensorHandle tmp = nullptr;
      if (!o->is_contiguous()) {  // make it contiguous on the device first
        std::vector<int64_t> cs(o->sizes.size());
        int64_t acc = 1;
        for (size_t d = cs.size(); d-- > 0;) {
          cs[d] = acc;
          acc *= std::max<int64_t>(o->sizes[d], 1);
        }
        if (aoti_torch_empty_strided(static_cast<int64_t>(cs.size()), o->sizes.data(), cs.data(), o->dtype,
                                     shim::kCUDA, 0, &tmp) != AOTI_TORCH_SUCCESS ||
            aoti_torch_copy_(tmp, o, 1) != AOTI_TORCH_SUCCESS) {
          if (tmp) aoti_torch_delete_tensor_object(tmp);
          free_outputs();
          return fail(Error::Internal, "output " + std::to_string(i) + ": " + shim::last_error());
        }
        src = tmp;
      }
      size_t nbytes = static_cast<size_t>(src->numel()) * shim::element_size(src->dtype);
      cudaError_t ce = nbytes == 0 ? cudaSuccess
                                   : cudaMemcpyAsync(dst.mutable_data_ptr(), src->data_ptr(), nbytes, cudaMemcpyDefault,
                                                     g_stream);
      if (tmp) aoti_torch_delete_tensor_object(tmp);
      if (ce != cudaSuccess) {
        free_outputs();
        return fail(Error::Internal, "copying output " + std::to_string(i) + " failed: " + cuda_msg(ce));
      }
    }
    free_outputs();
    cudaError_t ce = cudaStreamSynchronize(g_stream);
    if (ce != cudaSuccess) return fail(Error::Internal, "method '" + m->name + "': CUDA error " + cuda_msg(ce));
    return Error::Ok;
  }

  void destroy(DelegateHandle* handle) const override {
    if (!handle) return;
    std::lock_guard<std::mutex> lk(g_mu);
    auto* m = static_cast<Method*>(handle);
    m->destroyed = true;
    release(m);
  }
};

// For programs whose memory plan puts delegate I/O on the GPU (executorch >= 1.4).
class CudaDeviceAllocator final : public executorch::runtime::DeviceAllocator {
 public:
  Result<void*> allocate(size_t nbytes, executorch::runtime::etensor::DeviceIndex index, size_t) override {
    void* p = nullptr;
    cudaSetDevice(index);
    if (cudaMalloc(&p, nbytes) != cudaSuccess) return Error::MemoryAllocationFailed;
    return p;
  }
  void deallocate(void* ptr, executorch::runtime::etensor::DeviceIndex) override { cudaFree(ptr); }
  Error copy_host_to_device(void* dst, const void* src, size_t n, executorch::runtime::etensor::DeviceIndex) override {
    return cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice) == cudaSuccess ? Error::Ok : Error::Internal;
  }
  Error copy_device_to_host(void* dst, const void* src, size_t n, executorch::runtime::etensor::DeviceIndex) override {
    return cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost) == cudaSuccess ? Error::Ok : Error::Internal;
  }
  executorch::runtime::etensor::DeviceType device_type() const override {
    return executorch::runtime::etensor::DeviceType::CUDA;
  }
};

}  // namespace

// ============================================================================================
// Public API
// ============================================================================================
Error register_backend() {
  static CudaBackend backend;
  static CudaDeviceAllocator allocator;
  static Error result = [] {
    executorch::runtime::register_device_allocator(&allocator);
    return executorch::runtime::register_backend({"CudaBackend", &backend});
  }();
  return result;
}

std::string load_cuda_driver() {
  static std::string err = [] {
    if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) return std::string();
    const char* e = dlerror();
    return std::string("cannot load the CUDA driver (libcuda.so.1): ") + (e ? e : "not found");
  }();
  return err;
}

void set_required_shared_buffers(std::vector<std::string> fqns) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_required_shared = std::move(fqns);
}

std::vector<std::string> shared_constant_fqns() {
  std::lock_guard<std::mutex> lk(g_mu);
  std::vector<std::string> out;
  for (const auto& kv : g_shared) out.push_back(kv.first);
  return out;
}

const DelegateError& last_error() { return g_error; }
void clear_last_error() { g_error = DelegateError{}; }

std::vector<LoadReport> load_reports() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_reports;
}

cudaStream_t stream() { return g_stream; }

BlobKeys resolve_blob_keys(std::string_view processed, std::string_view method_name) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.back() == '\0' || isspace(static_cast<unsigned char>(s.back())))) s.remove_suffix(1);
    while (!s.empty() && isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    return std::string(s);
  };
  size_t nl = processed.find('\n');
  if (nl != std::string_view::npos) {
    BlobKeys k{trim(processed.substr(0, nl)), trim(processed.substr(nl + 1))};
    if (!k.so_key.empty() && !k.weights_key.empty()) return k;
  }
  std::string m(method_name);
  if (m.empty()) return {"so_blob", "weights_blob"};
  return {m + "_so_blob", m + "_weights_blob"};
}

}  // namespace tq::cuda
