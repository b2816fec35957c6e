// spinlm_comm's entry point: the MPI half (mpi.cc) and the NCCL half (nccl.cc) in one N-API module,
// built only where MPI is found (binding.gyp, scripts/comm-deps.mjs) and loaded only when a process
// group is created (src/dist/mpi.ts).
#include <napi.h>

#include "comm/comm.h"

namespace {

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("commAbiVersion", Napi::Number::New(env, 2));  // src/dist/mpi.ts COMM_ABI_VERSION
  for (const auto* list : {&spinlm::comm::MpiExports(), &spinlm::comm::NcclExports()})
    for (const spinlm::comm::Export& e : *list) exports.Set(e.name, Napi::Function::New(env, e.fn));
  return exports;
}

}  // namespace

NODE_API_MODULE(spinlm_comm, InitModule)
