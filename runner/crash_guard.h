// Scoped conversion of a crash into one error line, for the regions where the runner parses or loads
// files it did not write: the program's flatbuffer (executorch asserts on some inconsistencies instead
// of returning an error) and the model .so it dlopens (a damaged ELF can crash the dynamic loader).
//
// Inside a CrashGuard, SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT print
//   error: <what> (<signal>[; executorch: <last fatal log message>]) (<file>)
// and _exit(exit_code). Outside, signals behave as usual. TQ_RUNNER_NO_CRASH_GUARD=1 disables the guards
// (to get a core dump when debugging the runner itself).
#pragma once

#include <cstddef>
#include <string>

namespace tq {

class CrashGuard {
 public:
  CrashGuard(const std::string& what, const std::string& file, int exit_code);
  ~CrashGuard();
  CrashGuard(const CrashGuard&) = delete;
  CrashGuard& operator=(const CrashGuard&) = delete;

 private:
  bool active_ = true;
};

// A file the handler removes before exiting (the delegate's temp copy of a model .so while it is being
// dlopened), so a crash leaves nothing behind; nullptr clears it.
void crash_cleanup_file(const char* path);

// Remembers executorch's last fatal log line (called from the runner's log hook) for the message above.
void note_fatal_log(const char* msg, size_t len);

}  // namespace tq
