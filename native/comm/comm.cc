// spinlm_comm: the MPI half of spinlm's process groups (src/dist/), a separate N-API module built
// only where MPI is found (binding.gyp, scripts/comm-deps.mjs) and loaded only when a process group
// is created, so the base addon and its prebuilt binary never need an MPI library.
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


// ---- NCCL, opened at run time ------------------------------------------------------------------
// The NCCL process group (src/dist/nccl.ts) moves CUDA tensors: device pointers and the CUDA
// backend's stream arrive as BigInts, so this module needs neither CUDA nor NCCL headers nor
// libraries at build time. libnccl is dlopen'ed on first use; the few declarations below are NCCL's
// stable C ABI (nccl.h, NCCL 2.x). The unique id travels over MPI (src/dist/nccl.ts broadcasts it).
typedef struct { char internal[128]; } NcclUniqueId;  // NCCL_UNIQUE_ID_BYTES
typedef void* NcclComm;
typedef int NcclResult;  // 0 = ncclSuccess
struct Nccl {
  void* lib = nullptr;
  std::string path;
  NcclResult (*getVersion)(int*);
  NcclResult (*getUniqueId)(NcclUniqueId*);
  NcclResult (*commInitRank)(NcclComm*, int, NcclUniqueId, int);
  NcclResult (*commDestroy)(NcclComm);
  NcclResult (*commAbort)(NcclComm);
  NcclResult (*commGetAsyncError)(NcclComm, NcclResult*);
  const char* (*getErrorString)(NcclResult);
  NcclResult (*allReduce)(const void*, void*, size_t, int, int, NcclComm, void*);
  NcclResult (*reduceScatter)(const void*, void*, size_t, int, int, NcclComm, void*);
  NcclResult (*allGather)(const void*, void*, size_t, int, NcclComm, void*);
  NcclResult (*broadcast)(const void*, void*, size_t, int, int, NcclComm, void*);
} g_nccl;

template <typename F>
bool Sym(void* lib, const char* name, F* out, std::string* missing) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (!*out) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

// ncclLoad(path | null) -> { library, version }: SPINLM_NCCL_LIBRARY's path, else libnccl.so.2 /
// libnccl.so through the loader's search (LD_LIBRARY_PATH, ldconfig), then CUDA's usual directories.
Napi::Value NcclLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_nccl.lib) {
    std::vector<std::string> tries;
    if (info[0].IsString()) {
      tries.push_back(info[0].As<Napi::String>().Utf8Value());
    } else {
      for (const char* dir : {"", "/usr/local/cuda/lib64/", "/usr/lib/x86_64-linux-gnu/", "/usr/local/lib/"})
        for (const char* name : {"libnccl.so.2", "libnccl.so"}) tries.push_back(std::string(dir) + name);
    }
    std::string errors;
    for (const std::string& t : tries) {
      void* lib = dlopen(t.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        g_nccl.lib = lib;
        g_nccl.path = t;
        break;
      }
      const char* e = dlerror();
      if (tries.size() == 1 && e) errors = e;
    }
    if (!g_nccl.lib) {
      std::string msg = "NCCL library not found (tried ";
      for (size_t i = 0; i < tries.size(); i++) msg += (i ? ", " : "") + tries[i];
      msg += ")";
      if (!errors.empty()) msg += ": " + errors;
      Throw(env, msg);
    }
    std::string missing;
    Nccl& n = g_nccl;
    Sym(n.lib, "ncclGetVersion", &n.getVersion, &missing);
    Sym(n.lib, "ncclGetUniqueId", &n.getUniqueId, &missing);
    Sym(n.lib, "ncclCommInitRank", &n.commInitRank, &missing);
    Sym(n.lib, "ncclCommDestroy", &n.commDestroy, &missing);
    Sym(n.lib, "ncclCommAbort", &n.commAbort, &missing);
    Sym(n.lib, "ncclCommGetAsyncError", &n.commGetAsyncError, &missing);
    Sym(n.lib, "ncclGetErrorString", &n.getErrorString, &missing);
    Sym(n.lib, "ncclAllReduce", &n.allReduce, &missing);
    Sym(n.lib, "ncclReduceScatter", &n.reduceScatter, &missing);
    Sym(n.lib, "ncclAllGather", &n.allGather, &missing);
    Sym(n.lib, "ncclBroadcast", &n.broadcast, &missing);
    if (!missing.empty()) {
      const std::string path = n.path;
      dlclose(n.lib);
      n.lib = nullptr;
      Throw(env, path + " is not a usable NCCL library (missing " + missing + ")");
    }
  }
  int version = 0;
  g_nccl.getVersion(&version);
  Napi::Object o = Napi::Object::New(env);
  o.Set("library", g_nccl.path);
  o.Set("version", version);
  return o;
}

void NcclRequire(Napi::Env env) {
  if (!g_nccl.lib) ThrowState(env, "NCCL is not loaded: call ncclLoad() first");
}

void NcclCheck(Napi::Env env, NcclResult r, const char* what) {
  if (r != 0) Throw(env, std::string(what) + " failed: " + g_nccl.getErrorString(r) + " (NCCL error " + std::to_string(r) + ")");
}

// ncclUniqueId() -> Uint8Array [128] (rank 0 makes it; the others receive it over MPI)
Napi::Value NcclUniqueIdNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclRequire(env);
  NcclUniqueId id;
  NcclCheck(env, g_nccl.getUniqueId(&id), "ncclGetUniqueId");
  Napi::Uint8Array out = Napi::Uint8Array::New(env, sizeof id.internal);
  std::memcpy(out.Data(), id.internal, sizeof id.internal);
  return out;
}

NcclComm CommOf(const Napi::Value& v) {
  if (!v.IsExternal()) ThrowType(v.Env(), "comm must be a communicator from ncclInit()");
  NcclComm c = v.As<Napi::External<void>>().Data();
  if (!c) ThrowState(v.Env(), "the NCCL communicator is destroyed");
  return c;
}

// ncclInit(id Uint8Array[128], nranks, rank) -> comm (the CUDA device must be selected already)
Napi::Value NcclInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclRequire(env);
  if (!info[0].IsTypedArray() || info[0].As<Napi::Uint8Array>().ByteLength() != 128) ThrowType(env, "ncclInit: id must be a Uint8Array of 128 bytes");
  NcclUniqueId id;
  std::memcpy(id.internal, info[0].As<Napi::Uint8Array>().Data(), 128);
  NcclComm comm = nullptr;
  NcclCheck(env, g_nccl.commInitRank(&comm, static_cast<int>(ToInt(info[1], "nranks")), id, static_cast<int>(ToInt(info[2], "rank"))), "ncclCommInitRank");
  return Napi::External<void>::New(env, comm);
}

int NcclType(Napi::Value v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "i32") return 2;   // ncclInt32
  if (s == "f32") return 7;   // ncclFloat32
  if (s == "f64") return 8;   // ncclFloat64
  if (s == "bf16") return 9;  // ncclBfloat16 (NCCL >= 2.10)
  if (s == "u8") return 1;    // ncclUint8
  ThrowType(v.Env(), "dtype must be 'f32', 'bf16', 'i32', 'f64' or 'u8'");
}

int NcclOp(Napi::Value v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "sum") return 0;  // ncclSum
  if (s == "max") return 2;  // ncclMax
  if (s == "min") return 3;  // ncclMin
  ThrowType(v.Env(), "op must be 'sum', 'max' or 'min'");
}

void* Ptr(Napi::Value v, const char* what) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsBigInt()) ThrowType(v.Env(), std::string(what) + " must be a device pointer (BigInt)");
  bool lossless = true;
  const uint64_t p = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) Throw(v.Env(), std::string(what) + " is not a 64-bit pointer");
  return reinterpret_cast<void*>(p);
}

// ncclCollective(kind, comm, send | null (in place), recv, count, dtype, op | root, stream): enqueued
// on `stream` (stream-ordered with the CUDA backend's kernels; returns at once). count: elements per
// rank block for reduceScatter / allGather, of the whole buffer otherwise.
Napi::Value NcclCollective(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclRequire(env);
  const std::string kind = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  NcclComm comm = CommOf(info[1]);
  void* recv = Ptr(info[3], "recv");
  void* send = Ptr(info[2], "send");
  if (!send) send = recv;  // in place (allGather: the caller passes its own block's address)
  const int64_t count = ToInt(info[4], "count");
  const int type = NcclType(info[5]);
  void* stream = Ptr(info[7], "stream");
  const size_t n = static_cast<size_t>(count);
  NcclResult r;
  if (kind == "allReduce") r = g_nccl.allReduce(send, recv, n, type, NcclOp(info[6]), comm, stream);
  else if (kind == "reduceScatter") r = g_nccl.reduceScatter(send, recv, n, type, NcclOp(info[6]), comm, stream);
  else if (kind == "allGather") r = g_nccl.allGather(send, recv, n, type, comm, stream);
  else if (kind == "broadcast") r = g_nccl.broadcast(send, recv, n, type, static_cast<int>(ToInt(info[6], "root")), comm, stream);
  else ThrowType(env, "kind must be allReduce, reduceScatter, allGather or broadcast");
  NcclCheck(env, r, ("nccl " + kind).c_str());
  return env.Undefined();
}

// ncclAsyncError(comm) -> '' or the communicator's asynchronous error (a peer died, a network error)
Napi::Value NcclAsyncError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclRequire(env);
  NcclResult async = 0;
  NcclCheck(env, g_nccl.commGetAsyncError(CommOf(info[0]), &async), "ncclCommGetAsyncError");
  return Napi::String::New(env, async == 0 ? "" : g_nccl.getErrorString(async));
}

// ncclDestroy(comm, abort): frees the communicator (abort: without waiting for outstanding work)
Napi::Value NcclDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NcclRequire(env);
  NcclComm comm = CommOf(info[0]);
  NcclCheck(env, info[1].ToBoolean() ? g_nccl.commAbort(comm) : g_nccl.commDestroy(comm), "ncclCommDestroy");
  return env.Undefined();
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("commAbiVersion", Napi::Number::New(env, 2));  // src/dist/mpi.ts COMM_ABI_VERSION
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("allReduce", Napi::Function::New(env, AllReduce));
  exports.Set("reduceScatter", Napi::Function::New(env, ReduceScatter));
  exports.Set("allGather", Napi::Function::New(env, AllGather));
  exports.Set("iallReduce", Napi::Function::New(env, IAllReduce));
  exports.Set("ireduceScatter", Napi::Function::New(env, IReduceScatter));
  exports.Set("iallGather", Napi::Function::New(env, IAllGather));
  exports.Set("wait", Napi::Function::New(env, WaitRequest));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("abort", Napi::Function::New(env, Abort));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("ncclLoad", Napi::Function::New(env, NcclLoad));
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueIdNew));
  exports.Set("ncclInit", Napi::Function::New(env, NcclInit));
  exports.Set("ncclCollective", Napi::Function::New(env, NcclCollective));
  exports.Set("ncclAsyncError", Napi::Function::New(env, NcclAsyncError));
  exports.Set("ncclDestroy", Napi::Function::New(env, NcclDestroy));
  return exports;
}

}  // namespace

NODE_API_MODULE(spinlm_comm, InitModule)
