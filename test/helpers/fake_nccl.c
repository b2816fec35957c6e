/* A stand-in for libnccl.so.2 (test/nccl.test.ts): NCCL's C ABI, no GPU. Each call appends one line
 * to $FAKE_NCCL_LOG (what it was given); a count of 0 fails with ncclInvalidArgument (4) so the error
 * path is tested. Built only with -DFAKE_NCCL_PARTIAL: just ncclGetVersion (a library that is not NCCL). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;

static void logf_(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void logf_(const char* fmt, ...) {
  const char* path = getenv("FAKE_NCCL_LOG");
  if (!path) return;
  FILE* f = fopen(path, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

int ncclGetVersion(int* v) { *v = 21903; return 0; }
#ifndef FAKE_NCCL_PARTIAL
static int comm_storage;
const char* ncclGetErrorString(int r) { return r == 4 ? "invalid argument (fake)" : "fake error"; }
int ncclGetUniqueId(ncclUniqueId* id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 7 + 1); return 0; }
int ncclCommInitRank(void** comm, int nranks, ncclUniqueId id, int rank) {
  logf_("init nranks=%d rank=%d id0=%d id127=%d", nranks, rank, id.internal[0], id.internal[127]);
  *comm = &comm_storage;
  return 0;
}
int ncclCommDestroy(void* comm) { logf_("destroy %d", comm == &comm_storage); return 0; }
int ncclCommAbort(void* comm) { logf_("abort %d", comm == &comm_storage); return 0; }
int ncclCommGetAsyncError(void* comm, int* r) { (void)comm; *r = getenv("FAKE_NCCL_ASYNC_ERROR") ? 4 : 0; return 0; }
#define COLL(name, ...) \
  logf_(name " send=%#zx recv=%#zx count=%zu type=%d %s=%d stream=%#zx", (size_t)send, (size_t)recv, count, type, __VA_ARGS__, (size_t)stream); \
  return count == 0 ? 4 : 0;
int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, void* comm, void* stream) { (void)comm; COLL("allReduce", "op", op) }
int ncclReduceScatter(const void* send, void* recv, size_t count, int type, int op, void* comm, void* stream) { (void)comm; COLL("reduceScatter", "op", op) }
int ncclAllGather(const void* send, void* recv, size_t count, int type, void* comm, void* stream) { (void)comm; COLL("allGather", "op", -1) }
int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, void* comm, void* stream) { (void)comm; COLL("broadcast", "root", root) }
#endif
