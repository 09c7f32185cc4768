// tq-runner: generate text with a program written by tq-export (model.pte + aoti_cuda_blob.ptd).
//
// A thin main: flat flags, file and prompt checks before any GPU work, prompt -> prefill -> decode loop
// streaming text to stdout, warm-up then N timed iterations, fixed-width stats on stderr.
// Every failure is one line on stderr, "error: <what> (<file>)", with exit code 2 for bad input
// (files, prompt, flags), 3 when there is no usable CUDA device or driver, 1 for failures at run time.
#include <cuda_runtime_api.h>

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "crash_guard.h"
#include "cuda_backend.h"
#include "model.h"
#include "program_meta.h"
#include "shims.h"
#include "tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

const char* kUsage = R"(usage: tq-runner --model MODEL.pte [options]

Runs a program written by tq-export: prompt -> prefill -> decode until EOS or --max-new-tokens.

  --model PATH           program (.pte)                                            [required]
  --data PATH            weights file (.ptd)               [default: aoti_cuda_blob.ptd beside --model]
  --tokenizer PATH       Hugging Face tokenizer.json           [default: tokenizer.json beside --model]
  --prompt TEXT          prompt text (tokenized with --tokenizer)
  --prompt-tokens IDS    prompt as token ids, e.g. 1,2,3 (no tokenizer needed to run); @FILE reads
                         them from FILE (commas or whitespace), for prompts too long for a command line
  --max-new-tokens N     tokens to generate at most                                  [default: 128]
  --ignore-eos           keep generating past EOS tokens (benchmarks, soak tests)
  --temperature F        sampling temperature, 0 = greedy                              [default: 0]
  --seed N               seed for the program's sampler or host sampling               [default: 0]
  --warmup N             untimed generations before the timed ones                     [default: 0]
  --iters N              timed generations; stats are medians                          [default: 1]
  --print-token-ids      also print the generated token ids
  --info                 print the program's metadata and exit (no GPU needed)
  --tokenize-only        print the token ids of --prompt and exit (no GPU needed)
  --extract-so DIR       write the AOTI .so files in --model to DIR and exit (for runner/check_shims.sh)
  --verbose              show ExecuTorch runtime logs
  --help                 this text

Exit codes: 0 ok, 1 runtime failure, 2 bad input (files, prompt, flags), 3 no CUDA device or driver.
)";

struct Flags {
  std::string model, data, tokenizer, prompt, prompt_tokens, extract_dir;
  bool has_prompt = false, has_prompt_tokens = false;
  int64_t max_new_tokens = 128;
  float temperature = 0.f;
  uint64_t seed = 0;
  int warmup = 0, iters = 1;
  bool ignore_eos = false, print_ids = false, info = false, tokenize_only = false, verbose = false, help = false;
};

bool g_verbose = false;

void log_to_stderr(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*, size_t line,
                   const char* msg, size_t len) {
  // ExecuTorch logs its own view of a failure; we report one line ourselves, so only --verbose shows it.
  if (level == kFatal) tq::note_fatal_log(msg, len);
  tq::note_executorch_log(static_cast<char>(level), msg, len);
  if (!g_verbose) return;
  std::fprintf(stderr, "[et %c] %s:%zu %.*s\n", static_cast<char>(level), file, line, static_cast<int>(len), msg);
}

std::string dir_of(const std::string& path) {
  size_t s = path.find_last_of('/');
  return s == std::string::npos ? "." : path.substr(0, s);
}

bool file_exists(const std::string& p) {
  struct stat st{};
  return stat(p.c_str(), &st) == 0;
}

template <typename T>
T parse_number(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    long double x = std::stold(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    if (std::is_integral<T>::value && (x != static_cast<long double>(static_cast<long long>(x)) || x < 0))
      throw std::invalid_argument(v);
    return static_cast<T>(x);
  } catch (const std::exception&) {
    throw tq::RunnerError("bad value '" + v + "' for " + flag, "command line");
  }
}

Flags parse_flags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    size_t eq = a.find('=');
    bool inline_value = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (inline_value) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return v;
      if (i + 1 >= argc) throw tq::RunnerError("missing value for " + a, "command line");
      return argv[++i];
    };
    if (a == "--model") f.model = value();
    else if (a == "--data") f.data = value();
    else if (a == "--tokenizer") f.tokenizer = value();
    else if (a == "--prompt") f.prompt = value(), f.has_prompt = true;
    else if (a == "--prompt-tokens") f.prompt_tokens = value(), f.has_prompt_tokens = true;
    else if (a == "--max-new-tokens") f.max_new_tokens = parse_number<int64_t>(a, value());
    else if (a == "--temperature") f.temperature = parse_number<float>(a, value());
    else if (a == "--seed") f.seed = parse_number<uint64_t>(a, value());
    else if (a == "--warmup") f.warmup = parse_number<int>(a, value());
    else if (a == "--iters") f.iters = parse_number<int>(a, value());
    else if (a == "--extract-so") f.extract_dir = value();
    else if (a == "--print-token-ids") f.print_ids = true;
    else if (a == "--ignore-eos") f.ignore_eos = true;
    else if (a == "--info") f.info = true;
    else if (a == "--tokenize-only") f.tokenize_only = true;
    else if (a == "--verbose") f.verbose = true;
    else if (a == "--help" || a == "-h") f.help = true;
    else throw tq::RunnerError("unknown flag " + a + " (see --help)", "command line");
  }
  if (f.help) return f;
  if (f.iters < 1) throw tq::RunnerError("--iters must be at least 1", "command line");
  if (f.temperature < 0) throw tq::RunnerError("--temperature must be >= 0", "command line");
  if (f.has_prompt && f.has_prompt_tokens)
    throw tq::RunnerError("give --prompt or --prompt-tokens, not both", "command line");
  if (f.model.empty() && !(f.tokenize_only && !f.tokenizer.empty()))
    throw tq::RunnerError("--model is required (see --help)", "command line");
  bool generates = !f.info && !f.tokenize_only && f.extract_dir.empty();
  if (generates && !f.has_prompt && !f.has_prompt_tokens)
    throw tq::RunnerError("give --prompt or --prompt-tokens", "command line");
  if (f.data.empty() && !f.model.empty()) f.data = dir_of(f.model) + "/" + tq::meta::kDefaultData;
  if (f.tokenizer.empty() && !f.model.empty()) f.tokenizer = dir_of(f.model) + "/" + tq::meta::kDefaultTokenizer;
  return f;
}

std::vector<int64_t> parse_token_list(const std::string& s, const std::string& where) {
  std::vector<int64_t> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (cur.empty()) continue;
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(cur, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != cur.size()) throw tq::RunnerError("bad token id '" + cur + "' in --prompt-tokens", where);
      out.push_back(v);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

int64_t gpu_used_bytes() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return static_cast<int64_t>(total_b - free_b);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

constexpr double kMiB = 1024.0 * 1024.0;

void print_info(const tq::TqProgram& p) {
  const auto& m = p.meta();
  std::printf("%-18s %s\n", "tq-export version", m.tq_export_version.c_str());
  std::printf("%-18s %s\n", "model", m.model_name.c_str());
  std::printf("%-18s %lld\n", "max_seq_len", static_cast<long long>(m.max_seq_len));
  std::printf("%-18s %lld\n", "vocab_size", static_cast<long long>(m.vocab_size));
  std::printf("%-18s %lld\n", "bos_id", static_cast<long long>(m.bos_id));
  std::string eos, shared;
  for (int64_t e : m.eos_ids) eos += (eos.empty() ? "" : ",") + std::to_string(e);
  for (const auto& s : m.shared_buffers) shared += (shared.empty() ? "" : ",") + s;
  std::printf("%-18s %s\n", "eos_ids", eos.c_str());
  std::printf("%-18s %lld/%lld\n", "k/v bits", static_cast<long long>(m.k_bits), static_cast<long long>(m.v_bits));
  std::printf("%-18s %s\n", "shared buffers", shared.c_str());
  std::printf("%-18s %lld\n", "prefill chunk", static_cast<long long>(p.prefill_chunk()));
  if (!m.dtype.empty()) std::printf("%-18s %s\n", "dtype", m.dtype.c_str());
  if (!m.signatures.empty()) std::printf("signatures\n%s\n", m.signatures.c_str());
}

int run(const Flags& f) {
  if (!f.extract_dir.empty()) {
    tq::CrashGuard guard("cannot read program (corrupt file?)", f.model, tq::kExitInput);
    for (const auto& path : tq::extract_so_blobs(f.model, f.extract_dir)) std::printf("%s\n", path.c_str());
    return tq::kExitOk;
  }

  // ---- tokenizer: needed for --prompt; with --prompt-tokens only to print text (if the file exists)
  std::unique_ptr<tq::Tokenizer> tok;
  auto load_tokenizer = [&] {
    if (!file_exists(f.tokenizer)) {
      if (f.tokenize_only || f.has_prompt) throw tq::RunnerError("tokenizer file not found (pass --tokenizer)", f.tokenizer);
      return;
    }
    try {
      tok = std::make_unique<tq::Tokenizer>(tq::Tokenizer::load(f.tokenizer));
    } catch (const tq::TokenizerError& e) {
      throw tq::RunnerError(e.what(), f.tokenizer);
    }
  };
  if (f.tokenize_only) {
    load_tokenizer();
    if (!f.has_prompt) throw tq::RunnerError("--tokenize-only needs --prompt", "command line");
    std::vector<int64_t> ids;
    try {
      ids = tok->encode(f.prompt);
    } catch (const tq::TokenizerError& e) {
      throw tq::RunnerError(e.what(), "--prompt");
    }
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%lld", i ? " " : "", static_cast<long long>(ids[i]));
    std::printf("\n");
    return tq::kExitOk;
  }

  // ---- program (no GPU yet)
  auto t_open = Clock::now();
  std::unique_ptr<tq::TqProgram> program;
  {
    tq::CrashGuard guard("cannot read program (corrupt file?)", f.model, tq::kExitInput);
    program = std::make_unique<tq::TqProgram>(f.model, f.data);
  }
  tq::TqProgram& prog = *program;
  if (f.info) {
    print_info(prog);
    return tq::kExitOk;
  }
  const auto& meta = prog.meta();
  load_tokenizer();

  // ---- prompt
  std::vector<int64_t> prompt;
  if (f.has_prompt_tokens && f.prompt_tokens.rfind('@', 0) == 0) {
    std::string path = f.prompt_tokens.substr(1);
    std::ifstream in(path);
    if (!in) throw tq::RunnerError("cannot read the prompt token file", path);
    std::stringstream text;
    text << in.rdbuf();
    prompt = parse_token_list(text.str(), path);
  } else if (f.has_prompt_tokens) {
    prompt = parse_token_list(f.prompt_tokens, "command line");
  } else {
    try {
      prompt = tok->encode(f.prompt);
    } catch (const tq::TokenizerError& e) {
      throw tq::RunnerError(e.what(), "--prompt");
    }
  }
  if (meta.bos_id >= 0) prompt.insert(prompt.begin(), meta.bos_id);
  if (prompt.empty()) throw tq::RunnerError("the prompt is empty", "command line");
  int64_t vocab = meta.vocab_size > 0 ? meta.vocab_size : (tok ? tok->vocab_size() : -1);
  for (int64_t id : prompt)
    if (vocab > 0 && (id < 0 || id >= vocab))
      throw tq::RunnerError("prompt token id " + std::to_string(id) + " is out of range [0, " + std::to_string(vocab) + ")",
                            f.has_prompt_tokens ? f.model : f.tokenizer);
  if (static_cast<int64_t>(prompt.size()) > meta.max_seq_len)
    throw tq::RunnerError("prompt has " + std::to_string(prompt.size()) + " tokens, more than the program's max_seq_len " +
                              std::to_string(meta.max_seq_len),
                          f.model);
  std::set<int64_t> eos(meta.eos_ids.begin(), meta.eos_ids.end());
  if (!meta.has_eos_ids && tok)
    for (const char* s : {"<|im_end|>", "<|endoftext|>", "</s>"})
      if (tok->token_id(s) >= 0) eos.insert(tok->token_id(s));

  // ---- GPU
  std::string driver_err = tq::cuda::load_cuda_driver();
  if (!driver_err.empty()) throw tq::RunnerError(driver_err, "libcuda.so.1", tq::kExitNoCuda);
  int ndev = 0;
  cudaError_t ce = cudaGetDeviceCount(&ndev);
  if (ce != cudaSuccess || ndev == 0)
    throw tq::RunnerError(std::string("no CUDA device: ") + (ce != cudaSuccess ? cudaGetErrorString(ce) : "none found"),
                          "cudaGetDeviceCount", tq::kExitNoCuda);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  if (tq::cuda::register_backend() != executorch::runtime::Error::Ok)
    throw tq::RunnerError("cannot register the CudaBackend delegate", "tq-runner", tq::kExitRuntime);
  tq::cuda::set_required_shared_buffers(meta.shared_buffers);

  cudaFree(nullptr);  // create the context now so it is not counted as model memory
  int64_t mem_base = gpu_used_bytes();
  auto load = [&](const char* method) {
    // Loading dlopens the model .so stored in the program: a damaged one can crash the dynamic loader.
    tq::CrashGuard guard(std::string("crashed loading method '") + method + "' (corrupt program?)", f.model,
                         tq::kExitInput);
    prog.load_method(method);
  };
  auto t_load = Clock::now();
  load(tq::meta::kPrefill);
  double ms_prefill_load = ms_since(t_load);
  int64_t mem_prefill = gpu_used_bytes();
  auto t_load2 = Clock::now();
  load(tq::meta::kDecode);
  double ms_decode_load = ms_since(t_load2);
  int64_t mem_decode = gpu_used_bytes();
  double ms_open = std::chrono::duration<double, std::milli>(t_load - t_open).count();

  std::vector<std::string> pool = tq::cuda::shared_constant_fqns();
  std::set<std::string> pool_set(pool.begin(), pool.end());
  for (const auto& b : meta.shared_buffers)
    if (!pool_set.count(b))
      throw tq::RunnerError("buffer '" + b + "' named by " + tq::meta::kSharedBuffers +
                                " is not a constant of any method, so prefill and decode cannot share it",
                            f.model);

  // ---- generation: warm-up, then timed iterations
  prog.set_seed(f.seed);
  int64_t chunk = prog.prefill_chunk();
  int64_t max_new = std::max<int64_t>(0, std::min<int64_t>(f.max_new_tokens, meta.max_seq_len - prompt.size()));
  std::vector<double> prompt_ms, decode_ms;
  std::vector<int64_t> generated;
  int64_t decode_steps = 0, mem_peak = mem_decode;
  // Device memory in use after the first decode step and after the last one: a steady decode loop
  // allocates nothing that outlives a step, so the two must match however long it runs.
  int64_t mem_first_step = -1, mem_last_step = -1, shim_first_step = -1, shim_last_step = -1;
  tq::shim::reset_peak_memory();
  // A model .so damaged inside an otherwise valid program can crash when run; say so in one line.
  tq::CrashGuard guard("crashed running the program (corrupt .pte? TQ_RUNNER_NO_CRASH_GUARD=1 gives a core dump)",
                       f.model, tq::kExitRuntime);
  for (int it = 0; it < f.warmup + f.iters; ++it) {
    bool timed = it >= f.warmup, show = it == f.warmup;
    tq::Utf8Stream out;
    generated.clear();
    prog.set_seed(f.seed);
    auto t0 = Clock::now();
    int64_t pos = 0, next = -1;
    while (pos < static_cast<int64_t>(prompt.size())) {
      int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(prompt.size()) - pos);
      next = prog.step(tq::meta::kPrefill, prompt.data() + pos, n, pos, f.temperature);
      pos += n;
    }
    double t_prompt = ms_since(t0);
    mem_peak = std::max(mem_peak, gpu_used_bytes());
    auto t1 = Clock::now();
    int64_t steps = 0;
    while (static_cast<int64_t>(generated.size()) < max_new) {
      if (vocab > 0 && (next < 0 || next >= vocab))
        throw tq::RunnerError("the program produced token id " + std::to_string(next) + ", outside [0, " +
                                  std::to_string(vocab) + ")",
                              f.model, tq::kExitRuntime);
      if (!f.ignore_eos && eos.count(next)) break;
      generated.push_back(next);
      if (show && tok) {
        std::string s = out.push(tok->token_bytes(next));
        std::fwrite(s.data(), 1, s.size(), stdout);
        std::fflush(stdout);
      } else if (show) {
        std::printf("%s%lld", generated.size() > 1 ? " " : "", static_cast<long long>(next));
        std::fflush(stdout);
      }
      if (static_cast<int64_t>(generated.size()) >= max_new || pos >= meta.max_seq_len) break;
      next = prog.step(tq::meta::kDecode, &next, 1, pos, f.temperature);
      ++pos;
      ++steps;
      if (steps == 1 && show) mem_first_step = gpu_used_bytes(), shim_first_step = tq::shim::memory_stats().live_bytes;
    }
    if (show && steps > 0) mem_last_step = gpu_used_bytes(), shim_last_step = tq::shim::memory_stats().live_bytes;
    double t_decode = ms_since(t1);
    mem_peak = std::max(mem_peak, gpu_used_bytes());
    if (show) {
      std::string s = out.flush();
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::printf("\n");
      if (f.print_ids) {
        std::printf("token ids:");
        for (int64_t id : generated) std::printf(" %lld", static_cast<long long>(id));
        std::printf("\n");
      }
      std::fflush(stdout);
    }
    if (timed) {
      prompt_ms.push_back(t_prompt);
      decode_ms.push_back(steps ? t_decode / static_cast<double>(steps) : 0.0);
      decode_steps = steps;
    }
  }

  // ---- stats (stderr, so stdout carries only the text)
  double p_ms = median(prompt_ms), d_ms = median(decode_ms);
  size_t weights = 0;
  std::string sharing;
  for (const auto& r : tq::cuda::load_reports()) {
    if (r.method == tq::meta::kPrefill) weights = r.blob_bytes;
    if (r.method == tq::meta::kDecode)
      sharing = std::to_string(r.num_shared) + "/" + std::to_string(r.num_constants) + " constants shared with prefill, " +
                (r.loaded_own_blob ? "own weights loaded too" : "no own weights loaded");
  }
  auto tq_mem = tq::shim::memory_stats();
  std::fprintf(stderr, "device          %s\n", prop.name);
  std::fprintf(stderr, "load            %10.1f ms   (open %.1f, prefill %.1f, decode %.1f)\n",
               ms_open + ms_prefill_load + ms_decode_load, ms_open, ms_prefill_load, ms_decode_load);
  std::fprintf(stderr, "prompt eval     %10.2f ms   %6zu tokens  %10.2f tok/s\n", p_ms, prompt.size(),
               p_ms > 0 ? 1000.0 * static_cast<double>(prompt.size()) / p_ms : 0.0);
  std::fprintf(stderr, "eval            %10.2f ms/token %3lld tokens  %10.2f tok/s\n", d_ms,
               static_cast<long long>(decode_steps), d_ms > 0 ? 1000.0 / d_ms : 0.0);
  std::fprintf(stderr, "gpu memory      %10.1f MiB peak in use (weights %.1f, after prefill load %.1f, after decode load %.1f)\n",
               (mem_peak - mem_base) / kMiB, weights / kMiB, (mem_prefill - mem_base) / kMiB, (mem_decode - mem_base) / kMiB);
  std::fprintf(stderr, "shim memory     %10.1f MiB peak activations (%.1f live)\n", tq_mem.peak_bytes / kMiB,
               tq_mem.live_bytes / kMiB);
  std::fprintf(stderr, "sharing         %s\n", sharing.c_str());
  std::fprintf(stderr, "iterations      %d timed, %d warm-up (medians shown)\n", f.iters, f.warmup);
  // One machine-readable line for runner/gpu_check.sh.
  std::fprintf(stderr, "mem-bytes base=%lld after_prefill=%lld after_decode=%lld peak=%lld weights=%zu "
               "first_step=%lld last_step=%lld shim_first_step=%lld shim_last_step=%lld\n",
               static_cast<long long>(mem_base), static_cast<long long>(mem_prefill),
               static_cast<long long>(mem_decode), static_cast<long long>(mem_peak), weights,
               static_cast<long long>(mem_first_step), static_cast<long long>(mem_last_step),
               static_cast<long long>(shim_first_step), static_cast<long long>(shim_last_step));
  return tq::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  try {
    flags = parse_flags(argc, argv);
  } catch (const tq::RunnerError& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.file.c_str());
    return e.exit_code;
  }
  if (flags.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  g_verbose = flags.verbose;
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_to_stderr, __FILE__));
  executorch::runtime::runtime_init();
  try {
    return run(flags);
  } catch (const tq::RunnerError& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), e.file.c_str());
    return e.exit_code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s (%s)\n", e.what(), flags.model.c_str());
    return tq::kExitRuntime;
  }
}
