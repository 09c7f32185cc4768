// CrashGuard: see crash_guard.h. The handler only uses async-signal-safe calls (write, _exit).
#include "crash_guard.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace tq {

namespace {

constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
constexpr int kNumSignals = sizeof(kSignals) / sizeof(kSignals[0]);

char g_what[512];
char g_file[1024];
char g_fatal[512];
char g_cleanup[4096];
int g_code = 2;
struct sigaction g_old[kNumSignals];

void put(const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "segmentation fault";
    case SIGBUS: return "bus error";
    case SIGILL: return "illegal instruction";
    case SIGFPE: return "arithmetic exception";
    case SIGABRT: return "abort";
    default: return "signal";
  }
}

void on_signal(int sig) {
  if (g_cleanup[0]) unlink(g_cleanup);
  put("error: ");
  put(g_what);
  put(" (");
  put(signal_name(sig));
  if (g_fatal[0]) {
    put("; executorch: ");
    put(g_fatal);
  }
  put(") (");
  put(g_file);
  put(")\n");
  _exit(g_code);
}

void copy(char* dst, size_t cap, const char* src, size_t len) {
  size_t n = len < cap - 1 ? len : cap - 1;
  std::memcpy(dst, src, n);
  dst[n] = 0;
  for (size_t i = 0; i < n; ++i)
    if (dst[i] == '\n') dst[i] = ' ';  // keep the report on one line
}

}  // namespace

CrashGuard::CrashGuard(const std::string& what, const std::string& file, int exit_code) {
  active_ = std::getenv("TQ_RUNNER_NO_CRASH_GUARD") == nullptr;
  if (!active_) return;
  copy(g_what, sizeof g_what, what.data(), what.size());
  copy(g_file, sizeof g_file, file.data(), file.size());
  g_fatal[0] = 0;
  g_code = exit_code;
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < kNumSignals; ++i) sigaction(kSignals[i], &sa, &g_old[i]);
}

CrashGuard::~CrashGuard() {
  if (!active_) return;
  for (int i = 0; i < kNumSignals; ++i) sigaction(kSignals[i], &g_old[i], nullptr);
}

void note_fatal_log(const char* msg, size_t len) { copy(g_fatal, sizeof g_fatal, msg, len); }

void crash_cleanup_file(const char* path) {
  if (path) copy(g_cleanup, sizeof g_cleanup, path, std::strlen(path));
  else g_cleanup[0] = 0;
}

}  // namespace tq
