// spinlm_comm's NCCL half: the NCCL process group (src/dist/nccl.ts) moves CUDA tensors. Device
// pointers and the CUDA backend's stream arrive as BigInts, so this file needs neither CUDA nor NCCL
// headers nor libraries at build time: it is compiled into spinlm_comm wherever that module is built
// (where mpicc is found), with no NCCL on the machine. libnccl is dlopen'ed on first use; the few
// declarations below are NCCL's stable C ABI (nccl.h, NCCL 2.x). The unique id travels over MPI
// (src/dist/nccl.ts broadcasts it).
#include <dlfcn.h>
#include <napi.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "napi_util.h"

namespace {

using spinlm::napi::Throw;
using spinlm::napi::ThrowState;
using spinlm::napi::ThrowType;
using spinlm::napi::ToInt;

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

}  // namespace

namespace spinlm::comm {

const std::vector<Export>& NcclExports() {
  static const std::vector<Export> list = {
      {"ncclLoad", NcclLoad}, {"ncclUniqueId", NcclUniqueIdNew}, {"ncclInit", NcclInit},
      {"ncclCollective", NcclCollective}, {"ncclAsyncError", NcclAsyncError}, {"ncclDestroy", NcclDestroy},
  };
  return list;
}

}  // namespace spinlm::comm
