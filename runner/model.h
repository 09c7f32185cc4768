// A program written by tq-export, as the runner sees it: file validation, metadata from its constant
// methods, and one generation step through `prefill` or `decode`.
//
// Everything up to load_method() works without a GPU, so bad files and bad prompts are reported before
// any device work (and are testable on a CPU-only machine).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace executorch::extension::module {
class Module;
}

namespace tq {

enum ExitCode { kExitOk = 0, kExitRuntime = 1, kExitInput = 2, kExitNoCuda = 3 };

// A failure reported as one line, "error: <what> (<file>)", and the exit code to use.
struct RunnerError : std::runtime_error {
  RunnerError(const std::string& what, std::string file_, int code = kExitInput)
      : std::runtime_error(what), file(std::move(file_)), exit_code(code) {}
  std::string file;
  int exit_code;
};

struct Metadata {
  std::string tq_export_version;
  std::string model_name;
  int64_t max_seq_len = -1;
  int64_t max_prefill = -1;
  int64_t vocab_size = -1;
  int64_t bos_id = -1;
  std::vector<int64_t> eos_ids;
  bool has_eos_ids = false;  // the program states its stop tokens (possibly none)
  std::string dtype, signatures;
  int64_t k_bits = -1, v_bits = -1;
  std::vector<std::string> shared_buffers;
};

class TqProgram {
 public:
  // Validates both files and reads the metadata. Throws RunnerError. No GPU needed.
  TqProgram(const std::string& pte_path, const std::string& ptd_path);
  ~TqProgram();

  const Metadata& meta() const { return meta_; }
  const std::string& pte_path() const { return pte_; }
  const std::string& ptd_path() const { return ptd_; }

  // Initializes a method's delegate (GPU). Throws RunnerError naming the .pte or .ptd.
  void load_method(const char* name);

  // Most tokens one prefill call accepts (the upper bound of its planned tokens input).
  int64_t prefill_chunk() const;

  // Runs `method` on tokens[0..n) at positions start_pos.. and returns the next token id.
  int64_t step(const char* method, const int64_t* tokens, int64_t n, int64_t start_pos, float temperature);

  void set_seed(uint64_t seed) {
    seed_ = seed;
    rng_.seed(seed);
  }

 private:
  std::string pte_, ptd_;
  std::unique_ptr<executorch::extension::module::Module> module_;
  Metadata meta_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;

  void check_weights_file();
  void read_metadata();
};

// ExecuTorch's last error/fatal log line (fed by the runner's log hook), cleared by take; "" if none.
// Added to error messages when the runtime only returned an error code.
void note_executorch_log(char level, const char* msg, size_t len);
std::string take_executorch_error();

// Writes each "*_so_blob" in a program's named data to dir/<key>.so (for runner/check_shims.sh);
// returns the paths. Needs no weights file and no GPU.
std::vector<std::string> extract_so_blobs(const std::string& pte, const std::string& dir);

}  // namespace tq
