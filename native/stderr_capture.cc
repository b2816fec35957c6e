// stderrCaptureBegin() / stderrCaptureEnd(token): file descriptor 2 redirected to an unlinked temp file
// around a synchronous call, then restored, returning what was written meanwhile. The WebGPU probe
// (src/backend/webgpu/device.ts) wraps Dawn's adapter enumeration in it: Dawn prints two warnings about
// limits spinlm never uses with fprintf(stderr) (even under --quiet); the caller drops those two lines
// and passes anything else on. POSIX only (elsewhere Begin returns null and nothing is captured).
#include <napi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "napi_util.h"

#ifndef _WIN32
#include <unistd.h>
#endif

namespace {

Napi::Value StderrCaptureBegin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef _WIN32
  return env.Null();
#else
  std::fflush(stderr);
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir && *dir ? dir : "/tmp") + "/spinlm-stderr-XXXXXX";
  int tmp = mkstemp(path.data());
  if (tmp < 0) return env.Null();
  unlink(path.c_str());
  int saved = dup(2);
  if (saved < 0 || dup2(tmp, 2) < 0) {
    if (saved >= 0) close(saved);
    close(tmp);
    return env.Null();
  }
  Napi::Array token = Napi::Array::New(env, 2);
  token.Set(0u, Napi::Number::New(env, saved));
  token.Set(1u, Napi::Number::New(env, tmp));
  return token;
#endif
}

Napi::Value StderrCaptureEnd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef _WIN32
  return Napi::String::New(env, "");
#else
  if (info.Length() < 1 || !info[0].IsArray()) spinlm::napi::Throw(env, "stderrCaptureEnd: expected the token of stderrCaptureBegin");
  Napi::Array token = info[0].As<Napi::Array>();
  const int saved = token.Get(0u).As<Napi::Number>().Int32Value();
  const int tmp = token.Get(1u).As<Napi::Number>().Int32Value();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::string text;
  if (lseek(tmp, 0, SEEK_SET) == 0) {
    char buf[4096];
    for (ssize_t n; (n = read(tmp, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  }
  close(tmp);
  return Napi::String::New(env, text);
#endif
}

void Register(Napi::Env env, Napi::Object exports) {
  exports.Set("stderrCaptureBegin", Napi::Function::New(env, StderrCaptureBegin));
  exports.Set("stderrCaptureEnd", Napi::Function::New(env, StderrCaptureEnd));
}

spinlm::napi::OpRegistrar reg(Register);

}  // namespace
