// TqProgram: see model.h.
#include "model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>
#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/executor/program.h>

#include "cuda_backend.h"
#include "program_meta.h"
#include "ptd_check.h"

namespace tq {

using executorch::aten::ScalarType;
using executorch::aten::TensorImpl;
using executorch::extension::FileDataLoader;
using executorch::extension::FlatTensorDataMap;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Program;
using executorch::runtime::Tag;

namespace {

std::string g_et_error;  // last error-level ExecuTorch log message

// "<error code>" plus ExecuTorch's own explanation when it logged one.
std::string et_why(Error e) {
  std::string why = executorch::runtime::to_string(e);
  std::string log = take_executorch_error();
  return log.empty() ? why : why + ": " + log;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A host tensor in the form executorch wants (int32 sizes, dim order, strides), owning its data.
struct HostTensor {
  std::vector<int32_t> sizes;
  std::vector<uint8_t> dim_order;
  std::vector<int32_t> strides;
  std::vector<uint8_t> bytes;
  std::unique_ptr<TensorImpl> impl;

  HostTensor(ScalarType dtype, std::vector<int32_t> shape, const void* data, size_t nbytes)
      : sizes(std::move(shape)), bytes(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + nbytes) {
    strides.resize(sizes.size());
    int32_t acc = 1;
    for (size_t i = sizes.size(); i-- > 0;) {
      strides[i] = acc;
      acc *= sizes[i];
    }
    for (size_t i = 0; i < sizes.size(); ++i) dim_order.push_back(static_cast<uint8_t>(i));
    impl = std::make_unique<TensorImpl>(dtype, static_cast<ssize_t>(sizes.size()), sizes.data(), bytes.data(),
                                        dim_order.data(), strides.data(),
                                        executorch::runtime::TensorShapeDynamism::DYNAMIC_BOUND);
  }
  EValue value() const { return EValue(executorch::aten::Tensor(impl.get())); }
};

float to_float(const void* p, ScalarType t, int64_t i) {
  switch (t) {
    case ScalarType::Float: return static_cast<const float*>(p)[i];
    case ScalarType::Double: return static_cast<float>(static_cast<const double*>(p)[i]);
    case ScalarType::BFloat16: {
      uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case ScalarType::Half: {
      uint16_t h = static_cast<const uint16_t*>(p)[i];
      uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
      float f;
      if (exp == 0) f = std::ldexp(static_cast<float>(man), -24);
      else if (exp == 31) f = man ? NAN : INFINITY;
      else f = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
      return sign ? -f : f;
    }
    default: return 0.f;
  }
}

}  // namespace

void note_executorch_log(char level, const char* msg, size_t len) {
  if (level != 'E' && level != 'F') return;
  g_et_error.assign(msg, len);
  for (char& c : g_et_error)
    if (c == '\n') c = ' ';
}

std::string take_executorch_error() {
  std::string out;
  out.swap(g_et_error);
  return out;
}

// ============================================================================================
// Opening and validation (no GPU)
// ============================================================================================
TqProgram::TqProgram(const std::string& pte_path, const std::string& ptd_path) : pte_(pte_path), ptd_(ptd_path) {
  struct stat st{};
  if (stat(pte_.c_str(), &st) != 0) throw RunnerError("program file not found", pte_);
  if (!S_ISREG(st.st_mode)) throw RunnerError("program path is not a file", pte_);
  {
    std::ifstream f(pte_, std::ios::binary);
    char head[Program::kMinHeadBytes] = {};
    f.read(head, sizeof head);
    if (!f && f.gcount() == 0) throw RunnerError(st.st_size == 0 ? "program file is empty" : "cannot read program file", pte_);
    switch (Program::check_header(head, static_cast<size_t>(f.gcount()))) {
      case Program::HeaderStatus::CompatibleVersion: break;
      case Program::HeaderStatus::IncompatibleVersion:
        throw RunnerError("ExecuTorch program of a version this runtime cannot read", pte_);
      default: throw RunnerError("not an ExecuTorch program (.pte)", pte_);
    }
  }
  check_weights_file();

  module_ = std::make_unique<Module>(pte_, ptd_, Module::LoadMode::Mmap);
  take_executorch_error();
  Error e = module_->load(Program::Verification::InternalConsistency);
  if (e != Error::Ok) throw RunnerError("cannot load program (truncated or corrupt?): " + et_why(e), pte_);
  auto names = module_->method_names();
  if (!names.ok()) throw RunnerError("cannot list the program's methods", pte_);
  if (!names->count(meta::kMarker))
    throw RunnerError(std::string("not a tq-export program (it has no ") + meta::kMarker + " method)", pte_);
  for (const char* m : {meta::kPrefill, meta::kDecode})
    if (!names->count(m)) throw RunnerError(std::string("program has no '") + m + "' method", pte_);
  read_metadata();

  // 1.2/1.3 name the blobs after the method: then each .so in the program needs its weights here.
  auto pte_data = module_->program()->get_named_data_map();
  if (pte_data.ok() && *pte_data) {
    auto loader = FileDataLoader::from(ptd_.c_str());
    auto ptd_map = FlatTensorDataMap::load(&loader.get());
    std::set<std::string> ptd_keys;
    if (ptd_map.ok()) {
      uint32_t n = ptd_map->get_num_keys().ok() ? *ptd_map->get_num_keys() : 0;
      for (uint32_t i = 0; i < n; ++i)
        if (auto k = ptd_map->get_key(i); k.ok()) ptd_keys.insert(*k);
    }
    uint32_t n = (*pte_data)->get_num_keys().ok() ? *(*pte_data)->get_num_keys() : 0;
    for (uint32_t i = 0; i < n; ++i) {
      auto k = (*pte_data)->get_key(i);
      if (!k.ok() || !ends_with(*k, "_so_blob")) continue;
      std::string method = std::string(*k).substr(0, std::strlen(*k) - std::strlen("_so_blob"));
      if (names->count(method) && !ptd_keys.count(method + "_weights_blob"))
        throw RunnerError("weights file has no '" + method + "_weights_blob' (it belongs to another export?)", ptd_);
    }
  }
}

TqProgram::~TqProgram() = default;

void TqProgram::check_weights_file() {
  struct stat st{};
  if (stat(ptd_.c_str(), &st) != 0) throw RunnerError("weights file not found (pass --data)", ptd_);
  if (!S_ISREG(st.st_mode)) throw RunnerError("weights path is not a file", ptd_);
  std::string damage = check_ptd_structure(ptd_);
  if (!damage.empty()) throw RunnerError("not a valid ExecuTorch weights file (.ptd): " + damage, ptd_);
  auto loader = FileDataLoader::from(ptd_.c_str());
  if (!loader.ok()) throw RunnerError("cannot open weights file", ptd_);
  auto map = FlatTensorDataMap::load(&loader.get());
  if (!map.ok()) throw RunnerError("not an ExecuTorch weights file (.ptd), or truncated", ptd_);
  auto n = map->get_num_keys();
  bool has_blob = false;
  for (uint32_t i = 0; n.ok() && i < *n; ++i) {
    auto k = map->get_key(i);
    if (k.ok() && ends_with(*k, "_weights_blob")) has_blob = true;
  }
  if (!has_blob) throw RunnerError("weights file holds no AOTI weights blob (not the .ptd of a CUDA export?)", ptd_);
}

void TqProgram::read_metadata() {
  auto get = [&](const char* name) -> std::vector<EValue> {
    auto names = module_->method_names();
    if (!names.ok() || !names->count(name)) return {};
    auto r = module_->execute(name);
    if (!r.ok()) throw RunnerError(std::string("cannot read metadata ") + name, pte_);
    return *r;
  };
  auto get_int = [&](const char* name, int64_t dflt) {
    auto v = get(name);
    return !v.empty() && v[0].isInt() ? v[0].toInt() : dflt;
  };
  auto get_str = [&](const char* name) {
    auto v = get(name);
    if (v.empty()) return std::string();
    if (v[0].isString()) return std::string(v[0].toString());
    if (v[0].isInt()) return std::to_string(v[0].toInt());
    if (v[0].isDouble()) return std::to_string(v[0].toDouble());
    return std::string();
  };

  meta_.tq_export_version = get_str(meta::kMarker);
  meta_.model_name = get_str(meta::kModelName);
  meta_.max_seq_len = get_int(meta::kMaxSeqLen, -1);
  meta_.max_prefill = get_int(meta::kMaxPrefill, -1);
  meta_.dtype = get_str(meta::kDtype);
  meta_.signatures = get_str(meta::kSignatures);
  meta_.vocab_size = get_int(meta::kVocabSize, -1);
  meta_.bos_id = get_int(meta::kBosId, -1);
  meta_.k_bits = get_int(meta::kKBits, -1);
  meta_.v_bits = get_int(meta::kVBits, -1);
  {
    auto names = module_->method_names();
    meta_.has_eos_ids = names.ok() && names->count(meta::kEosIds);
  }
  for (const EValue& v : get(meta::kEosIds))
    if (v.isInt()) meta_.eos_ids.push_back(v.toInt());
  for (const EValue& v : get(meta::kSharedBuffers)) {
    if (!v.isString()) continue;
    std::string s(v.toString()), cur;
    for (char c : s + ",") {
      if (c == ',' || c == ';' || isspace(static_cast<unsigned char>(c))) {
        if (!cur.empty()) meta_.shared_buffers.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
  }
  if (meta_.max_seq_len <= 0)
    throw RunnerError(std::string("program has no valid ") + meta::kMaxSeqLen + " (made by a newer tq-export?)", pte_);
}

// ============================================================================================
// GPU side
// ============================================================================================
void TqProgram::load_method(const char* name) {
  tq::cuda::clear_last_error();
  take_executorch_error();
  Error e = module_->load_method(name);
  if (e == Error::Ok) return;
  const auto& de = tq::cuda::last_error();
  std::string why = de.message.empty() ? et_why(e) : de.message;
  using DE = tq::cuda::DelegateError;
  throw RunnerError(std::string("cannot load method '") + name + "': " + why, de.culprit == DE::kWeights ? ptd_ : pte_,
                    de.culprit == DE::kDevice ? kExitRuntime : kExitInput);
}

int64_t TqProgram::prefill_chunk() const {
  int64_t planned = -1;  // upper bound of T the program's memory plan allows
  auto mm = module_->method_meta(meta::kPrefill);
  if (mm.ok()) {
    auto ti = mm->input_tensor_meta(meta::kInTokens);
    if (ti.ok() && ti->sizes().size() > 0) planned = ti->sizes()[ti->sizes().size() - 1];
  }
  if (meta_.max_prefill > 0) return planned > 0 ? std::min(planned, meta_.max_prefill) : meta_.max_prefill;
  return std::max<int64_t>(1, planned);
}

int64_t TqProgram::step(const char* method, const int64_t* tokens, int64_t n, int64_t start_pos, float temperature) {
  auto mm = module_->method_meta(method);
  if (!mm.ok()) throw RunnerError(std::string("program has no method '") + method + "'", pte_);
  auto bad_sig = [&](const std::string& what) {
    return RunnerError(std::string("method '") + method + "' " + what + " (see runner/program_meta.h)", pte_);
  };
  if (mm->num_inputs() < 3 || mm->num_inputs() > 4) throw bad_sig("takes " + std::to_string(mm->num_inputs()) + " inputs, expected 3 or 4");

  std::vector<std::unique_ptr<HostTensor>> keep;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < mm->num_inputs(); ++i) {
    auto tag = mm->input_tag(i);
    if (!tag.ok()) throw bad_sig("has an unreadable input " + std::to_string(i));
    if (*tag != Tag::Tensor) {  // scalar inputs: temperature as double, extra as int seed
      if (i == meta::kInTemperature && *tag == Tag::Double) inputs.emplace_back(static_cast<double>(temperature));
      else if (i == meta::kInExtra && *tag == Tag::Int) inputs.emplace_back(static_cast<int64_t>(seed_ + start_pos));
      else throw bad_sig("has a non-tensor input " + std::to_string(i));
      continue;
    }
    auto ti = mm->input_tensor_meta(i);
    if (!ti.ok()) throw bad_sig("has an unreadable input " + std::to_string(i));
    ScalarType dt = ti->scalar_type();
    std::vector<int32_t> planned(ti->sizes().begin(), ti->sizes().end());
    int64_t planned_numel = 1;
    for (int32_t s : planned) planned_numel *= s;
    std::vector<int32_t> shape = planned;
    if (i == meta::kInTokens) {
      if (dt != ScalarType::Long || planned.empty()) throw bad_sig("input 0 must be int64 tokens [1, T]");
      shape.back() = static_cast<int32_t>(n);
      keep.push_back(std::make_unique<HostTensor>(dt, shape, tokens, sizeof(int64_t) * n));
    } else if (i == meta::kInPos) {
      if (dt != ScalarType::Long || planned.empty()) throw bad_sig("input 1 must be int64 positions");
      std::vector<int64_t> pos;
      if (planned_numel == 1 && n > 1) {
        pos.push_back(start_pos);  // start position only
      } else {
        for (int64_t k = 0; k < n; ++k) pos.push_back(start_pos + k);
        shape.back() = static_cast<int32_t>(n);
      }
      keep.push_back(std::make_unique<HostTensor>(dt, shape, pos.data(), sizeof(int64_t) * pos.size()));
    } else if (i == meta::kInTemperature) {
      if (dt != ScalarType::Float) throw bad_sig("input 2 must be float32 temperature");
      std::vector<float> t(static_cast<size_t>(planned_numel), temperature);
      keep.push_back(std::make_unique<HostTensor>(dt, shape, t.data(), sizeof(float) * t.size()));
    } else if (dt == ScalarType::Long) {
      std::vector<int64_t> s(static_cast<size_t>(planned_numel), static_cast<int64_t>(seed_ + start_pos));
      keep.push_back(std::make_unique<HostTensor>(dt, shape, s.data(), sizeof(int64_t) * s.size()));
    } else if (dt == ScalarType::Float) {
      std::uniform_real_distribution<float> u(0.f, 1.f);
      std::vector<float> r(static_cast<size_t>(planned_numel));
      for (float& x : r) x = u(rng_);
      keep.push_back(std::make_unique<HostTensor>(dt, shape, r.data(), sizeof(float) * r.size()));
    } else {
      throw bad_sig("input 3 must be int64 (seed) or float32 (random numbers)");
    }
    inputs.push_back(keep.back()->value());
  }

  tq::cuda::clear_last_error();
  take_executorch_error();
  auto out = module_->execute(method, inputs);
  if (!out.ok()) {
    const auto& de = tq::cuda::last_error();
    std::string why = de.message.empty() ? et_why(out.error()) : de.message;
    if (out.error() == Error::InvalidArgument && de.message.empty())
      why += " (does the method accept " + std::to_string(n) + " tokens?)";
    throw RunnerError(std::string("running '") + method + "' failed: " + why, pte_, kExitRuntime);
  }
  if (out->empty() || !(*out)[0].isTensor()) throw bad_sig("returns no tensor");
  const auto& t = (*out)[0].toTensor();
  if (t.numel() == 0) throw bad_sig("returns an empty tensor");
  if (t.scalar_type() == ScalarType::Long) return t.const_data_ptr<int64_t>()[t.numel() - 1];
  if (t.scalar_type() == ScalarType::Int) return t.const_data_ptr<int32_t>()[t.numel() - 1];

  // Logits: sample the last row on the host.
  int64_t vocab = t.size(t.dim() - 1);
  int64_t base = t.numel() - vocab;
  const void* p = t.const_data_ptr();
  int64_t best = 0;
  float best_v = -INFINITY;
  for (int64_t k = 0; k < vocab; ++k) {
    float v = to_float(p, t.scalar_type(), base + k);
    if (v > best_v) best_v = v, best = k;
  }
  if (temperature <= 0.f) return best;
  std::vector<double> w(static_cast<size_t>(vocab));
  for (int64_t k = 0; k < vocab; ++k) w[k] = std::exp((to_float(p, t.scalar_type(), base + k) - best_v) / temperature);
  std::discrete_distribution<int64_t> d(w.begin(), w.end());
  return d(rng_);
}

std::vector<std::string> extract_so_blobs(const std::string& pte, const std::string& dir) {
  struct stat st{};
  if (stat(pte.c_str(), &st) != 0) throw RunnerError("program file not found", pte);
  Module module(pte, Module::LoadMode::Mmap);
  if (module.load(Program::Verification::InternalConsistency) != Error::Ok)
    throw RunnerError("cannot load program (not a .pte, truncated or corrupt?)", pte);
  std::vector<std::string> out;
  auto data = module.program()->get_named_data_map();
  if (!data.ok() || !*data) throw RunnerError("program holds no AOTI .so (not a CudaBackend export?)", pte);
  auto n = (*data)->get_num_keys();
  for (uint32_t i = 0; n.ok() && i < *n; ++i) {
    auto k = (*data)->get_key(i);
    if (!k.ok() || !ends_with(*k, "_so_blob")) continue;
    auto blob = (*data)->get_data(*k);
    if (!blob.ok()) throw RunnerError(std::string("cannot read ") + *k, pte);
    std::string path = dir + "/" + *k + ".so";
    std::string tmp = path + ".tmp";  // write then rename: no half-written .so is left behind
    {
      std::ofstream f(tmp, std::ios::binary);
      f.write(static_cast<const char*>(blob->data()), static_cast<std::streamsize>(blob->size()));
      if (!f) throw RunnerError("cannot write " + tmp, dir);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw RunnerError("cannot write " + path, dir);
    out.push_back(path);
  }
  if (out.empty()) throw RunnerError("program holds no AOTI .so (not a CudaBackend export?)", pte);
  return out;
}

}  // namespace tq
