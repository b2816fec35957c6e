// spinlm_comm's MPI half (src/dist/mpi.ts, src/dist/process_group.ts): collectives over MPI_COMM_WORLD
// on CPU-backend tensors. spinlm_comm is a separate N-API module built only where MPI is found
// (binding.gyp, scripts/comm-deps.mjs) and loaded only when a process group is created, so the base
// addon and its prebuilt binary never need an MPI library. comm.cc registers this file's functions
// and nccl.cc's.
//
// Buffers are CPU-backend tensors: views { handle, byteOffset } whose handle is the base addon's
// tagged External (native/napi_util.h, the same HostBuffer layout), or plain TypedArrays for small
// host-side exchanges. No copies: MPI reads and writes the tensors' memory directly.
//
// Every collective is non-blocking MPI (MPI_Iallreduce, ...) completed by a polling loop with a
// deadline: a peer that died or hangs turns into a JS error after `timeoutMs` instead of a hang
// (the caller then aborts the job; under mpirun a dead peer usually gets the whole job killed first).
//
// Overlap: iallReduce / ireduceScatter / iallGather issue a collective and return a request id;
// wait(id) completes it. Open MPI progresses a non-blocking collective only inside MPI calls, so a
// progress thread tests the outstanding requests (sleeping 100 us between rounds) while the main
// thread computes. Every MPI call, from either thread, holds one mutex: MPI_THREAD_SERIALIZED is
// all this needs. Results do not depend on it (the same MPI collective on the same buffers); only
// when the work happens does. SPINLM_COMM_PROGRESS=0 turns the thread off (progress in wait only).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <dlfcn.h>
#include <mpi.h>
#include <napi.h>
#include <sched.h>
#include <time.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "comm/comm.h"
#include "napi_util.h"

namespace {

using spinlm::napi::Throw;
using spinlm::napi::ThrowState;
using spinlm::napi::ThrowType;
using spinlm::napi::ToInt;

bool g_inited = false;

std::string MpiError(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

void RequireInit(Napi::Env env) {
  if (!g_inited) ThrowState(env, "MPI is not initialized: call init() first");
}

MPI_Datatype ToMpiType(Napi::Value v, int* size) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "f32") return *size = 4, MPI_FLOAT;
  if (s == "bf16") return *size = 2, MPI_UINT16_T;  // moved, never reduced
  if (s == "i32") return *size = 4, MPI_INT32_T;
  if (s == "f64") return *size = 8, MPI_DOUBLE;
  if (s == "u8") return *size = 1, MPI_UINT8_T;
  ThrowType(v.Env(), "dtype must be 'f32', 'bf16', 'i32', 'f64' or 'u8'");
}

MPI_Op ToOp(Napi::Value v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "sum") return MPI_SUM;
  if (s == "max") return MPI_MAX;
  if (s == "min") return MPI_MIN;
  ThrowType(v.Env(), "op must be 'sum', 'max' or 'min'");
}

// A buffer: a tensor view (checked against its buffer's size) or a TypedArray; null = MPI_IN_PLACE.
void* Buffer(Napi::Value v, const char* what, int64_t bytes, bool allow_null = false) {
  Napi::Env env = v.Env();
  if (allow_null && (v.IsNull() || v.IsUndefined())) return MPI_IN_PLACE;
  if (v.IsTypedArray()) {
    Napi::TypedArray a = v.As<Napi::TypedArray>();
    if (static_cast<int64_t>(a.ByteLength()) < bytes)
      Throw(env, std::string(what) + ": " + std::to_string(bytes) + " bytes do not fit a TypedArray of " + std::to_string(a.ByteLength()));
    return static_cast<char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  }
  return spinlm::napi::View<void>(v, what, bytes);
}

int Count(Napi::Value v, const char* what) {
  const int64_t n = ToInt(v, what);
  if (n > INT32_MAX) Throw(v.Env(), std::string(what) + " exceeds MPI's int count (split the buffer)");
  return static_cast<int>(n);
}

std::string FormatSeconds(int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", ms / 1000.0);
  return buf;
}

// Outstanding requests, by id (index into g_slots). Guarded by g_mu, as is every MPI call.
struct Slot {
  MPI_Request req = MPI_REQUEST_NULL;
  bool active = false;
  bool done = false;
  int error = MPI_SUCCESS;
};
std::mutex g_mu;
std::condition_variable g_cv;
std::vector<Slot> g_slots;
int g_pending = 0;  // active and not done
std::thread* g_progress = nullptr;  // never destroyed at exit (a joinable std::thread would terminate)
bool g_progress_stop = false;
bool g_progress_on = false;

void ProgressLoop() {
  std::unique_lock<std::mutex> lock(g_mu);
  while (!g_progress_stop) {
    if (g_pending == 0) {
      g_cv.wait(lock);
      continue;
    }
    for (Slot& s : g_slots) {
      if (!s.active || s.done) continue;
      int done = 0;
      s.error = MPI_Test(&s.req, &done, MPI_STATUS_IGNORE);
      if (done || s.error != MPI_SUCCESS) s.done = true, g_pending--;
    }
    lock.unlock();
    timespec ts{0, 100 * 1000};
    nanosleep(&ts, nullptr);
    lock.lock();
  }
}

// Issues a collective (fn fills the request) under the lock; returns its id.
int Issue(Napi::Env env, const char* what, const std::function<int(MPI_Request*)>& fn) {
  std::unique_lock<std::mutex> lock(g_mu);
  size_t id = 0;
  while (id < g_slots.size() && g_slots[id].active) id++;
  if (id == g_slots.size()) g_slots.emplace_back();
  Slot& s = g_slots[id];
  const int rc = fn(&s.req);
  if (rc != MPI_SUCCESS) {
    lock.unlock();
    ThrowState(env, std::string(what) + " failed: " + MpiError(rc));
  }
  s.active = true;
  s.done = false;
  s.error = MPI_SUCCESS;
  g_pending++;
  if (g_progress_on) g_cv.notify_one();
  return static_cast<int>(id);
}

// Completes request `id` or throws after timeoutMs (0 = wait forever). Spins briefly, then yields and
// sleeps between tests so oversubscribed ranks leave the cores to the others.
void Wait(Napi::Env env, int id, int64_t timeout_ms, const char* what) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  if (id < 0 || static_cast<size_t>(id) >= g_slots.size() || !g_slots[id].active) Throw(env, std::string(what) + ": no outstanding request " + std::to_string(id));
  for (int64_t i = 0;; i++) {
    {
      std::lock_guard<std::mutex> lock(g_mu);
      Slot& s = g_slots[id];
      if (!s.done) {
        int done = 0;
        s.error = MPI_Test(&s.req, &done, MPI_STATUS_IGNORE);
        if (done || s.error != MPI_SUCCESS) s.done = true, g_pending--;
      }
      if (s.done) {
        s.active = false;
        if (s.error != MPI_SUCCESS) {
          const std::string msg = std::string(what) + " failed: " + MpiError(s.error);
          s.error = MPI_SUCCESS;
          throw Napi::Error::New(env, "spinlm comm: " + msg);
        }
        return;
      }
    }
    if (i < 200) continue;
    if (i < 2000) {
      sched_yield();
    } else {
      timespec ts{0, 50 * 1000};
      nanosleep(&ts, nullptr);
    }
    if (timeout_ms > 0 && (i & 63) == 0) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
      if (ms > timeout_ms) {
        // the request cannot be cancelled portably; the caller aborts the job
        throw Napi::Error::New(env, std::string("spinlm comm: ") + what + " did not complete within " + FormatSeconds(timeout_ms) + " s");
      }
    }
  }
}

// init() -> { rank, size, threadLevel }: MPI_Init once (idempotent). libmpi is re-opened with
// RTLD_GLOBAL first: Node loads this module with RTLD_LOCAL, and Open MPI's plugins resolve libmpi's
// symbols globally.
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_inited) {
    for (const char* lib : {"libmpi.so.40", "libmpi.so.12", "libmpi.so"}) {
      if (dlopen(lib, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD) || dlopen(lib, RTLD_NOW | RTLD_GLOBAL)) break;
    }
    int flag = 0;
    MPI_Initialized(&flag);
    if (!flag) {
      int provided = 0;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      if (rc != MPI_SUCCESS) ThrowState(env, "MPI_Init failed: " + MpiError(rc));
    }
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_inited = true;
    const char* env_progress = std::getenv("SPINLM_COMM_PROGRESS");
    g_progress_on = level >= MPI_THREAD_SERIALIZED && !(env_progress && std::string(env_progress) == "0");
    if (g_progress_on) {
      g_progress_stop = false;
      g_progress = new std::thread(ProgressLoop);
    }
  }
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", rank);
  o.Set("size", size);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, len);
  const auto nl = v.find_first_of("\n,");
  o.Set("library", v.substr(0, nl));
  o.Set("progressThread", g_progress_on);
  return o;
}

// The collectives, each in two forms: iNAME(...) -> request id (complete it with wait(id, timeoutMs)),
// and NAME(..., timeoutMs), which issues and waits.

// [i]allReduce(send | null (in place), recv, count, dtype, op[, timeoutMs])
int IssueAllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireInit(env);
  int esize = 0;
  const int n = Count(info[2], "count");
  MPI_Datatype t = ToMpiType(info[3], &esize);
  void* send = Buffer(info[0], "send", int64_t{n} * esize, true);
  void* recv = Buffer(info[1], "recv", int64_t{n} * esize);
  MPI_Op op = ToOp(info[4]);
  return Issue(env, "allReduce", [&](MPI_Request* r) { return MPI_Iallreduce(send, recv, n, t, op, MPI_COMM_WORLD, r); });
}

// [i]reduceScatter(send [size * count], recv [count], count, dtype, op[, timeoutMs]): rank r gets block r.
int IssueReduceScatter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireInit(env);
  int esize = 0, size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int n = Count(info[2], "count");
  MPI_Datatype t = ToMpiType(info[3], &esize);
  void* send = Buffer(info[0], "send", int64_t{n} * esize * size);
  void* recv = Buffer(info[1], "recv", int64_t{n} * esize);
  MPI_Op op = ToOp(info[4]);
  return Issue(env, "reduceScatter", [&](MPI_Request* r) { return MPI_Ireduce_scatter_block(send, recv, n, t, op, MPI_COMM_WORLD, r); });
}

// [i]allGather(send [count] | null (in place: block `rank` of recv), recv [size * count], count, dtype[, timeoutMs])
int IssueAllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireInit(env);
  int esize = 0, size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int n = Count(info[2], "count");
  MPI_Datatype t = ToMpiType(info[3], &esize);
  void* send = Buffer(info[0], "send", int64_t{n} * esize, true);
  void* recv = Buffer(info[1], "recv", int64_t{n} * esize * size);
  return Issue(env, "allGather", [&](MPI_Request* r) {
    return MPI_Iallgather(send, send == MPI_IN_PLACE ? 0 : n, send == MPI_IN_PLACE ? MPI_DATATYPE_NULL : t, recv, n, t, MPI_COMM_WORLD, r);
  });
}

Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  Wait(info.Env(), IssueAllReduce(info), ToInt(info[5], "timeoutMs"), "allReduce");
  return info.Env().Undefined();
}
Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
  Wait(info.Env(), IssueReduceScatter(info), ToInt(info[5], "timeoutMs"), "reduceScatter");
  return info.Env().Undefined();
}
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  Wait(info.Env(), IssueAllGather(info), ToInt(info[4], "timeoutMs"), "allGather");
  return info.Env().Undefined();
}
Napi::Value IAllReduce(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), IssueAllReduce(info)); }
Napi::Value IReduceScatter(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), IssueReduceScatter(info)); }
Napi::Value IAllGather(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), IssueAllGather(info)); }

// wait(id, timeoutMs, what): completes a request from an i* call.
Napi::Value WaitRequest(const Napi::CallbackInfo& info) {
  const std::string what = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "collective";
  Wait(info.Env(), static_cast<int>(ToInt(info[0], "id")), ToInt(info[1], "timeoutMs"), what.c_str());
  return info.Env().Undefined();
}

// broadcast(buf, count, dtype, root, timeoutMs)
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireInit(env);
  int esize = 0;
  const int n = Count(info[1], "count");
  MPI_Datatype t = ToMpiType(info[2], &esize);
  void* buf = Buffer(info[0], "buffer", int64_t{n} * esize);
  const int root = Count(info[3], "root");
  Wait(env, Issue(env, "broadcast", [&](MPI_Request* r) { return MPI_Ibcast(buf, n, t, root, MPI_COMM_WORLD, r); }), ToInt(info[4], "timeoutMs"), "broadcast");
  return env.Undefined();
}

// barrier(timeoutMs)
Napi::Value Barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireInit(env);
  Wait(env, Issue(env, "barrier", [&](MPI_Request* r) { return MPI_Ibarrier(MPI_COMM_WORLD, r); }), ToInt(info[0], "timeoutMs"), "barrier");
  return env.Undefined();
}

// abort(code): ends every rank of the job (MPI_Abort); does not return.
Napi::Value Abort(const Napi::CallbackInfo& info) {
  const int code = static_cast<int>(ToInt(info[0], "code"));
  if (g_inited) {
    std::lock_guard<std::mutex> lock(g_mu);  // the progress thread is not inside MPI
    MPI_Abort(MPI_COMM_WORLD, code);
  }
  std::_Exit(code);
}

void StopProgress() {
  if (!g_progress) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_progress_stop = true;
  }
  g_cv.notify_one();
  g_progress->join();
  delete g_progress;
  g_progress = nullptr;
  g_progress_on = false;
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  StopProgress();
  if (g_inited) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
  g_inited = false;
  return info.Env().Undefined();
}

}  // namespace

namespace spinlm::comm {

const std::vector<Export>& MpiExports() {
  static const std::vector<Export> list = {
      {"init", Init}, {"allReduce", AllReduce}, {"reduceScatter", ReduceScatter}, {"allGather", AllGather},
      {"iallReduce", IAllReduce}, {"ireduceScatter", IReduceScatter}, {"iallGather", IAllGather}, {"wait", WaitRequest},
      {"broadcast", Broadcast}, {"barrier", Barrier}, {"abort", Abort}, {"finalize", Finalize},
  };
  return list;
}

}  // namespace spinlm::comm
