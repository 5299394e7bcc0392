// The scheduler of the simt layer (see simt.h): blocks one after the other on the calling thread, one
// ucontext fiber per CUDA thread, switched only at barriers and warp collectives.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt {

thread_local const ThreadCtx* g_thread = nullptr;
thread_local uint3 g_block_idx{0, 0, 0};
thread_local dim3 g_block_dim, g_grid_dim;

namespace {

// Hardware limits (compute capability 8.0 and 9.0).
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without cudaFuncSetAttribute
constexpr size_t kMaxOptInSmem = 163 * 1024;  // A100 (sm_80): the stricter of the two targets
constexpr size_t kStack = SIMT_ASAN ? 512 * 1024 : 128 * 1024;

struct Abort {};  // unwinds a fiber whose launch has failed

enum class St { Runnable, Barrier, Warp, Done };
constexpr int kSyncWarp = 7;
const char* const kOpName[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                               "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};

struct Fiber : ThreadCtx {
  ucontext_t ctx;
  St st = St::Runnable;
  Site site{nullptr, 0};
  int op = 0, arg = 0, width = 32;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  void* fake_stack = nullptr;
  bool started = false;
};

struct Stacks {
  std::vector<char*> base;
  char* get(size_t i) {
    while (base.size() <= i) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* p = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      mprotect(p, page, PROT_NONE);  // guard page: an overflow faults instead of corrupting the next stack
      base.push_back(static_cast<char*>(p) + page);
    }
    return base[i];
  }
};

struct Run {
  uint64_t epoch = 0;  // advanced at every block start and __syncthreads: accesses of one epoch are unordered
  std::vector<uint64_t> warp_syncs;  // per warp: completed collectives (they order the lanes' accesses)
  const LaunchConfig* cfg = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Fiber* cur = nullptr;
  ucontext_t sched;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::vector<unsigned char> smem;
  cudaError_t code = cudaSuccess;
  std::string error;
};

std::mutex g_mutex;  // one launch at a time: static __shared__ arrays are one copy
Stacks g_stacks;
Run* g_run = nullptr;
uint64_t g_epoch_seq = 0;  // barrier epochs, unique over all launches
thread_local cudaError_t g_last = cudaSuccess;
thread_local cudaError_t g_detail_code = cudaSuccess;
thread_local std::string g_detail;
std::unordered_map<const void*, size_t> g_smem_optin;

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "block (" << g_block_idx.x << "," << g_block_idx.y << "," << g_block_idx.z << ") thread (" << f.tid.x << ","
    << f.tid.y << "," << f.tid.z << ")";
  return s.str();
}
std::string at(Site s) { return std::string(s.file ? s.file : "?") + ":" + std::to_string(s.line); }

void fail(cudaError_t code, const std::string& msg) {
  Run& r = *g_run;
  if (r.code == cudaSuccess) {
    r.code = code;
    r.error = msg;
  }
}

void to_sched(Fiber& f, bool dying) {
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, g_run->sched_bottom, g_run->sched_size);
#else
  (void)dying;
#endif
  swapcontext(&f.ctx, &g_run->sched);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

// Parks the running fiber until the scheduler resumes it; unwinds it when the launch has failed.
void park() {
  Fiber& f = *g_run->cur;
  to_sched(f, false);
  if (g_run->code != cudaSuccess) throw Abort{};
}

void entry() {
  Run& r = *g_run;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  Fiber& f = *r.cur;
  f.started = true;
  try {
    (*r.body)();
  } catch (const Abort&) {
  } catch (const std::exception& e) {
    fail(cudaErrorLaunchFailure, where(f) + ": " + e.what());
  }
  f.st = St::Done;
  to_sched(f, true);
  std::abort();  // a finished fiber is never resumed
}

void resume(Run& r, Fiber& f) {
  r.cur = &f;
  g_thread = &f;
  void* fake = nullptr;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&fake, f.ctx.uc_stack.ss_sp, f.ctx.uc_stack.ss_size);
#endif
  swapcontext(&r.sched, &f.ctx);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_thread = nullptr;
}

// Completes the warp collectives every named lane has reached; returns whether any completed.
bool resolve_warps(Run& r) {
  const int n = static_cast<int>(r.fibers.size());
  bool any = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int lanes = n - w0 < 32 ? n - w0 : 32;
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = r.fibers[w0 + l];
      if (f.st != St::Warp) continue;
      const std::string what = std::string(kOpName[f.op]) + " at " + at(f.site) + " in " + where(f);
      if (!(f.mask >> l & 1u)) {
        fail(cudaErrorLaunchFailure, what + ": mask 0x" + [&] { std::ostringstream s; s << std::hex << f.mask; return s.str(); }() +
                                         " does not name the calling lane " + std::to_string(l));
        return false;
      }
      bool ready = true;
      for (int j = 0; j < 32 && ready; ++j) {
        if (!(f.mask >> j & 1u)) continue;
        if (j >= lanes) {
          fail(cudaErrorLaunchFailure, what + ": the mask names lane " + std::to_string(j) + ", which does not exist (" +
                                           std::to_string(n) + " threads in the block)");
          return false;
        }
        const Fiber& o = r.fibers[w0 + j];
        if (o.st == St::Runnable) {
          ready = false;
        } else if (o.st == St::Done) {
          fail(cudaErrorLaunchFailure, what + ": lane " + std::to_string(j) + " named in the mask has exited");
          return false;
        } else if (o.st == St::Barrier) {
          fail(cudaErrorLaunchFailure, what + ": lane " + std::to_string(j) + " named in the mask waits at __syncthreads (" +
                                           at(o.site) + ") instead");
          return false;
        } else if (o.op != f.op || o.mask != f.mask || o.site.line != f.site.line || o.site.file != f.site.file) {
          fail(cudaErrorLaunchFailure, what + ": lane " + std::to_string(j) + " is at " + kOpName[o.op] + " (" +
                                           at(o.site) + ") with another mask or call site");
          return false;
        }
      }
      if (!ready) continue;
      // Every lane of the mask is here: compute each one's result.
      uint64_t vote = 0;
      for (int j = 0; j < 32; ++j)
        if ((f.mask >> j & 1u) && r.fibers[w0 + j].value) vote |= 1ull << j;
      for (int j = 0; j < 32; ++j) {
        if (!(f.mask >> j & 1u)) continue;
        Fiber& o = r.fibers[w0 + j];
        if (o.op <= 3) {
          const int width = o.width;
          if (width < 1 || width > 32 || (width & (width - 1))) {
            fail(cudaErrorLaunchFailure, what + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]");
            return false;
          }
          const int seg = j / width * width;
          int src = j;
          if (o.op == 0) src = seg + ((o.arg % width) + width) % width;
          if (o.op == 1) src = j - seg - o.arg >= 0 ? j - o.arg : j;
          if (o.op == 2) src = j - seg + o.arg < width ? j + o.arg : j;
          if (o.op == 3) src = (j ^ o.arg) < seg + width ? j ^ o.arg : j;  // earlier groups: allowed
          if (src >= lanes || !(f.mask >> src & 1u)) {
            fail(cudaErrorLaunchFailure, std::string(kOpName[o.op]) + " at " + at(o.site) + " in " + where(o) +
                                             ": lane " + std::to_string(j) + " reads lane " + std::to_string(src) +
                                             ", which is not in the mask (undefined value)");
            return false;
          }
          o.result = r.fibers[w0 + src].value;
        } else if (o.op == 4) {
          o.result = vote;
        } else if (o.op == 5) {
          o.result = vote != 0;
        } else if (o.op == 6) {
          o.result = vote == (f.mask & (lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1)));
        }
      }
      const unsigned mask = f.mask;
      for (int j = 0; j < 32; ++j)
        if (mask >> j & 1u) r.fibers[w0 + j].st = St::Runnable;
      ++r.warp_syncs[w0 / 32];
      any = true;
    }
  }
  return any;
}

// Runs one block to completion (or to the launch's first error).
void run_block(Run& r, unsigned nthreads) {
  if (!r.smem.empty()) std::memset(r.smem.data(), 0xFF, r.smem.size());  // uninitialised: NaN / -1 patterns
  const dim3 bd = r.cfg->block;
  r.epoch = ++g_epoch_seq;
  r.warp_syncs.assign((nthreads + 31) / 32, 0);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = r.fibers[t];
    f.tid = uint3{t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
    f.linear = static_cast<int>(t);
    f.st = St::Runnable;
    f.fake_stack = nullptr;
    f.started = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks.get(t);
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
  }
  for (;;) {
    bool progress = true;
    while (progress && r.code == cudaSuccess) {
      progress = false;
      for (unsigned t = 0; t < nthreads && r.code == cudaSuccess; ++t) {
        if (r.fibers[t].st != St::Runnable) continue;
        resume(r, r.fibers[t]);
        progress = true;
      }
      if (r.code == cudaSuccess && resolve_warps(r)) progress = true;
    }
    if (r.code != cudaSuccess) break;
    // Nobody can run: all done, all at one barrier, or stuck.
    unsigned done = 0, barrier = 0;
    const Fiber* first_barrier = nullptr;
    const Fiber* first_done = nullptr;
    const Fiber* first_warp = nullptr;
    for (unsigned t = 0; t < nthreads; ++t) {
      const Fiber& f = r.fibers[t];
      if (f.st == St::Done) {
        ++done;
        if (!first_done) first_done = &f;
      } else if (f.st == St::Barrier) {
        ++barrier;
        if (!first_barrier) first_barrier = &f;
      } else if (f.st == St::Warp && !first_warp) {
        first_warp = &f;
      }
    }
    if (done == nthreads) break;
    if (first_warp) {  // cannot happen: resolve_warps reports every stuck collective
      fail(cudaErrorLaunchFailure, std::string(kOpName[first_warp->op]) + " at " + at(first_warp->site) + " in " +
                                       where(*first_warp) + " never completes");
      break;
    }
    if (done > 0) {
      fail(cudaErrorLaunchFailure, "__syncthreads at " + at(first_barrier->site) + ": " + std::to_string(barrier) +
                                       " threads of block (" + std::to_string(g_block_idx.x) + "," +
                                       std::to_string(g_block_idx.y) + "," + std::to_string(g_block_idx.z) +
                                       ") wait there but thread " + std::to_string(first_done->linear) +
                                       " has exited (a barrier not reached by every thread: undefined on the GPU)");
      break;
    }
    for (unsigned t = 0; t < nthreads; ++t) {
      const Fiber& f = r.fibers[t];
      if (f.site.line != first_barrier->site.line || f.site.file != first_barrier->site.file) {
        fail(cudaErrorLaunchFailure, "divergent __syncthreads: thread " + std::to_string(first_barrier->linear) +
                                         " waits at " + at(first_barrier->site) + ", thread " + std::to_string(f.linear) +
                                         " at " + at(f.site));
        break;
      }
    }
    if (r.code != cudaSuccess) break;
    r.epoch = ++g_epoch_seq;
    for (unsigned t = 0; t < nthreads; ++t) r.fibers[t].st = St::Runnable;
  }
  if (r.code != cudaSuccess) {
    // Unwind the parked fibers (park() throws Abort) so nothing is left half-run on their stacks.
    for (unsigned t = 0; t < nthreads; ++t)
      if (r.fibers[t].started && r.fibers[t].st != St::Done) resume(r, r.fibers[t]);
  }
}

}  // namespace

unsigned char* dynamic_smem() { return g_run ? g_run->smem.data() : nullptr; }

void syncthreads(Site s) {
  Fiber& f = *g_run->cur;
  f.st = St::Barrier;
  f.site = s;
  park();
}

uint64_t warp_collective(Site s, int op, unsigned mask, uint64_t bits, int arg, int width) {
  Fiber& f = *g_run->cur;
  f.st = St::Warp;
  f.site = s;
  f.op = op;
  f.mask = mask;
  f.value = bits;
  f.arg = arg;
  f.width = width;
  park();
  return f.result;
}

void syncwarp(Site s, unsigned mask) { warp_collective(s, kSyncWarp, mask, 0, 0, 32); }

void device_trap(Site s, const char* what) {
  fail(cudaErrorLaunchFailure, std::string(what) + " at " + at(s) + " in " + where(*g_run->cur));
  throw Abort{};
}

void device_fail(const char* cond, Site s) {
  fail(cudaErrorAssert, std::string("device-side assertion failed: ") + cond + " at " + at(s) + " in " +
                            where(*g_run->cur));
  throw Abort{};
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || static_cast<size_t>(value) > kMaxOptInSmem)
    return g_last = cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_smem_optin[func] = static_cast<size_t>(value);
  return cudaSuccess;
}

static cudaError_t set_error(cudaError_t code, const std::string& msg) {
  g_last = code;
  g_detail_code = code;
  g_detail = msg;
  return code;
}

cudaError_t launch(const LaunchConfig& cfg, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const dim3 g = cfg.grid, b = cfg.block;
  const std::string name = std::string("launch of ") + cfg.name + " <<<(" + std::to_string(g.x) + "," +
                           std::to_string(g.y) + "," + std::to_string(g.z) + "), (" + std::to_string(b.x) + "," +
                           std::to_string(b.y) + "," + std::to_string(b.z) + "), " + std::to_string(cfg.smem) + ">>>";
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0)
    return set_error(cudaErrorInvalidConfiguration, name + ": invalid configuration argument (a zero dimension)");
  if (b.x > kMaxThreads || b.y > kMaxThreads || b.z > kMaxBlockZ || threads > kMaxThreads)
    return set_error(cudaErrorInvalidConfiguration,
                     name + ": invalid configuration argument (more than 1024 threads per block)");
  if (g.x > kMaxGridX || g.y > kMaxGridYZ || g.z > kMaxGridYZ)
    return set_error(cudaErrorInvalidConfiguration,
                     name + ": invalid configuration argument (grid beyond (2^31-1, 65535, 65535))");
  size_t smem_limit = kDefaultSmem;
  if (auto it = g_smem_optin.find(cfg.func); it != g_smem_optin.end()) smem_limit = it->second;
  if (cfg.smem > smem_limit)
    return set_error(cudaErrorInvalidValue, name + ": " + std::to_string(cfg.smem) +
                                                " bytes of dynamic shared memory, over the " +
                                                std::to_string(smem_limit) + " allowed" +
                                                (smem_limit == kDefaultSmem ? " without cudaFuncSetAttribute" : ""));
  Run r;
  r.cfg = &cfg;
  r.body = &body;
  r.fibers.resize(threads);
  r.smem.resize(cfg.smem);
  g_run = &r;
  const dim3 saved_block = g_block_dim, saved_grid = g_grid_dim;
  g_block_dim = b;
  g_grid_dim = g;
  for (unsigned z = 0; z < g.z && r.code == cudaSuccess; ++z)
    for (unsigned y = 0; y < g.y && r.code == cudaSuccess; ++y)
      for (unsigned x = 0; x < g.x && r.code == cudaSuccess; ++x) {
        g_block_idx = uint3{x, y, z};
        run_block(r, static_cast<unsigned>(threads));
      }
  g_run = nullptr;
  g_block_dim = saved_block;
  g_grid_dim = saved_grid;
  if (r.code != cudaSuccess) return set_error(r.code, name + ": " + r.error);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------

uint16_t float_to_half_rn(float f) { return double_to_half_rn(static_cast<double>(f)); }

// Exact for every double: the value is decomposed with frexp and rounded once, to nearest even.
uint16_t double_to_half_rn(double d) {
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  if (std::isnan(d)) return sign | 0x7e00;
  const double a = std::fabs(d);
  if (a >= 65520.0) return sign | 0x7c00;  // rounds to infinity
  if (a < std::ldexp(1.0, -14)) {          // subnormal (or zero): units of 2^-24
    const double q = std::nearbyint(std::ldexp(a, 24));  // default rounding mode: to nearest even
    return sign | static_cast<uint16_t>(q);  // q == 1024 is the smallest normal, encoded the same way
  }
  int e;
  const double m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  const double q = std::nearbyint(std::ldexp(m, 11));  // 11 significant bits, in [1024, 2048]
  uint32_t bits = static_cast<uint32_t>(e - 1 + 15) << 10;
  bits += static_cast<uint32_t>(q) - 1024;  // q == 2048 carries into the exponent
  return sign | static_cast<uint16_t>(bits);
}

}  // namespace simt

__nv_bfloat16::__nv_bfloat16(double d) {
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  if (std::isnan(d)) {
    __x = sign | 0x7fc0;
    return;
  }
  const double a = std::fabs(d);
  if (a == 0 || std::isinf(a)) {
    __x = simt::float_to_bf16_rn(static_cast<float>(d));
    return;
  }
  int e;
  std::frexp(a, &e);
  // Round to a multiple of the bfloat16 ulp at this exponent (8 significant bits; subnormals below 2^-126).
  const int ulp_exp = (e - 1 < -126 ? -126 : e - 1) - 7;
  const double q = std::ldexp(std::nearbyint(std::ldexp(a, -ulp_exp)), ulp_exp);
  __x = simt::float_to_bf16_rn(static_cast<float>(d < 0 ? -q : q));  // q is a bfloat16 value (or overflows to inf)
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = simt::g_last;
  simt::g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return simt::g_last; }
const char* cudaGetErrorString(cudaError_t err) {
  if (err != cudaSuccess && err == simt::g_detail_code && !simt::g_detail.empty()) return simt::g_detail.c_str();
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ---------------------------------------------------------------------------------------------------
// Shared-memory race check (builds with SIMT_RACECHECK_BUILD: the sources are compiled with
// -fsanitize=thread, whose instrumentation calls the __tsan_* functions below on every load and store; no
// ThreadSanitizer runtime is linked, these are the whole runtime). For every byte of shared memory (the
// dynamic buffer and the static __shared__ arrays, which live in section simt_shared) it keeps the last
// writer and the last reader with the barrier epoch and their warp's collective count. Static __shared__
// arrays are static variables of this library: its writable segment is watched as a whole (the layer's own
// globals in it are only read by kernel threads). A store or load by
// another thread in the same epoch, not ordered by a warp collective both lanes took part in, is a race:
// the launch fails with the two threads and the offset. Atomics are not instrumented (no race).
// SIMT_RACECHECK=0 turns the check off at run time.

#if defined(SIMT_RACECHECK_BUILD)
#include <link.h>

namespace simt {
namespace {

const unsigned char* g_static_begin = nullptr;
const unsigned char* g_static_end = nullptr;

// The writable PT_LOAD segment (.data, .bss) of the library holding `anchor`.
__attribute__((no_sanitize_thread)) void find_static_range(const void* anchor) {
  struct Ctx {
    uintptr_t anchor, begin, end;
  } ctx{reinterpret_cast<uintptr_t>(anchor), 0, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) -> int {
        Ctx& c = *static_cast<Ctx*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
          const uintptr_t b = info->dlpi_addr + ph.p_vaddr, e = b + ph.p_memsz;
          if (c.anchor >= b && c.anchor < e) {
            c.begin = b;
            c.end = e;
            return 1;
          }
        }
        return 0;
      },
      &ctx);
  g_static_begin = reinterpret_cast<const unsigned char*>(ctx.begin);
  g_static_end = reinterpret_cast<const unsigned char*>(ctx.end);
}

struct Access {
  int32_t tid = -1;
  uint64_t epoch = 0, warp_sync = 0;
};
struct Shadow {
  Access write, read;
};
std::vector<Shadow> g_shadow_static, g_shadow_dyn;
const unsigned char* g_shadow_dyn_base = nullptr;
thread_local bool g_in_check = false;
const bool g_race_enabled = [] {
  const char* v = std::getenv("SIMT_RACECHECK");
  return !(v && std::string(v) == "0");
}();

__attribute__((no_sanitize_thread)) bool ordered(const Run& r, const Access& a, int tid) {
  if (a.tid < 0 || a.tid == tid || a.epoch != r.epoch) return true;
  return a.tid / 32 == tid / 32 && r.warp_syncs[tid / 32] > a.warp_sync;
}

__attribute__((no_sanitize_thread, noinline)) void race(Run& r, bool write, const Access& other, bool other_write,
                                                        const char* region, size_t offset) {
  const Fiber& f = *r.cur;
  fail(cudaErrorLaunchFailure,
       std::string("shared-memory race in ") + where(f) + ": thread " + std::to_string(f.linear) +
           (write ? " writes " : " reads ") + region + " shared byte " + std::to_string(offset) + ", which thread " +
           std::to_string(other.tid) + (other_write ? " wrote" : " read") +
           " since the last __syncthreads with no barrier or warp collective in between");
}

__attribute__((no_sanitize_thread)) void check(const void* addr, size_t n, bool write) {
  if (!g_race_enabled || g_in_check || g_thread == nullptr || g_run == nullptr) return;
  Run& r = *g_run;
  const unsigned char* p = static_cast<const unsigned char*>(addr);
  std::vector<Shadow>* shadow;
  const unsigned char* base;
  const char* region;
  if (g_static_begin == nullptr) find_static_range(&g_shadow_static);
  if (p >= g_static_begin && p < g_static_end) {
    base = g_static_begin;
    shadow = &g_shadow_static;
    region = "static";
    if (shadow->size() != static_cast<size_t>(g_static_end - g_static_begin))
      shadow->assign(g_static_end - g_static_begin, Shadow{});
  } else if (!r.smem.empty() && p >= r.smem.data() && p < r.smem.data() + r.smem.size()) {
    base = r.smem.data();
    shadow = &g_shadow_dyn;
    region = "dynamic";
    if (g_shadow_dyn_base != base || shadow->size() != r.smem.size()) {
      shadow->assign(r.smem.size(), Shadow{});
      g_shadow_dyn_base = base;
    }
  } else {
    return;
  }
  if (r.code != cudaSuccess) return;
  g_in_check = true;
  const int tid = r.cur->linear;
  const Access now{tid, r.epoch, r.warp_syncs[tid / 32]};
  const size_t off = static_cast<size_t>(p - base);
  for (size_t i = 0; i < n && off + i < shadow->size(); ++i) {
    Shadow& s = (*shadow)[off + i];
    if (!ordered(r, s.write, tid)) {
      race(r, write, s.write, true, region, off + i);
      break;
    }
    if (write && !ordered(r, s.read, tid)) {
      race(r, write, s.read, false, region, off + i);
      break;
    }
    (write ? s.write : s.read) = now;
  }
  g_in_check = false;
}

}  // namespace
}  // namespace simt

#define SIMT_TSAN_RW(n)                                                                                   \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_read##n(void* p) { simt::check(p, n, false); } \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_write##n(void* p) { simt::check(p, n, true); } \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_read##n(void* p) { simt::check(p, n, false); } \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_write##n(void* p) { simt::check(p, n, true); } \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_volatile_read##n(void* p) { simt::check(p, n, false); } \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_volatile_write##n(void* p) { simt::check(p, n, true); }
SIMT_TSAN_RW(1)
SIMT_TSAN_RW(2)
SIMT_TSAN_RW(4)
SIMT_TSAN_RW(8)
SIMT_TSAN_RW(16)
extern "C" {
__attribute__((no_sanitize_thread)) void __tsan_read_range(void* p, unsigned long n) { simt::check(p, n, false); }
__attribute__((no_sanitize_thread)) void __tsan_write_range(void* p, unsigned long n) { simt::check(p, n, true); }
__attribute__((no_sanitize_thread)) void __tsan_func_entry(void*) {}
__attribute__((no_sanitize_thread)) void __tsan_func_exit() {}
__attribute__((no_sanitize_thread)) void __tsan_init() {}
__attribute__((no_sanitize_thread)) void __tsan_vptr_update(void**, void*) {}
__attribute__((no_sanitize_thread)) void __tsan_vptr_read(void**) {}
}
#endif  // SIMT_RACECHECK_BUILD
