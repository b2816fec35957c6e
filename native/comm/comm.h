// spinlm_comm, the optional module behind src/dist/: comm.cc is its entry point, mpi.cc its MPI half
// (src/dist/mpi.ts, process_group.ts), nccl.cc its NCCL half (src/dist/nccl.ts). Each half lists its
// functions; comm.cc adds them to the module's exports.
#pragma once

#include <napi.h>

#include <vector>

namespace spinlm::comm {

// A function of the module: its name in the exports and its callback.
struct Export {
  const char* name;
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};

// init, allReduce, reduceScatter, allGather, their i* forms, wait, broadcast, barrier, abort, finalize
const std::vector<Export>& MpiExports();
// ncclLoad, ncclUniqueId, ncclInit, ncclCollective, ncclAsyncError, ncclDestroy
const std::vector<Export>& NcclExports();

}  // namespace spinlm::comm
