// cuBLAS through dlopen (cublas.h): the search, the loading and the argument mapping.
#include "cublas.h"

#include <dlfcn.h>
#include <glob.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <tuple>
#include <type_traits>

namespace spinlm::cuda::blas {

bool parse_mode(const std::string& s, GemmMode* mode, std::string* err) {
  if (s.empty() || s == "cublas") *mode = GemmMode::kF32;
  else if (s == "tf32") *mode = GemmMode::kTF32;
  else if (s == "bf16") *mode = GemmMode::kBF16;
  else if (s == "tiled") *mode = GemmMode::kTiled;
  else {
    *err = "SPINLM_CUDA_GEMM must be cublas, tf32, bf16 or tiled (got \"" + s + "\")";
    return false;
  }
  return true;
}

const char* mode_name(GemmMode m) {
  switch (m) {
    case GemmMode::kF32: return "f32";
    case GemmMode::kTF32: return "tf32";
    case GemmMode::kBF16: return "bf16";
    default: return "tiled";
  }
}

EnvFn process_env() {
  return [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
}

namespace {

std::vector<std::string> glob_dirs(const std::string& pattern) {
  std::vector<std::string> out;
  glob_t g;
  if (glob(pattern.c_str(), GLOB_ONLYDIR, nullptr, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  return out;
}

bool exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

}  // namespace

std::vector<std::string> search_paths(const EnvFn& env) {
  const std::string explicit_path = env("SPINLM_CUBLAS");
  if (!explicit_path.empty()) return {explicit_path};
  std::vector<std::string> out = {"libcublas.so.13", "libcublas.so.12"};
  std::set<std::string> seen;
  auto add_lib_dir = [&](const std::string& dir) {
    if (dir.empty() || !seen.insert(dir).second) return;
    out.push_back(dir + "/libcublas.so.13");
    out.push_back(dir + "/libcublas.so.12");
  };
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"})
    if (!env(var).empty()) add_lib_dir(env(var) + "/lib64");
  add_lib_dir("/usr/local/cuda/lib64");
  if (!env("CONDA_PREFIX").empty()) add_lib_dir(env("CONDA_PREFIX") + "/lib");

  std::vector<std::string> site;
  const std::string pp = env("PYTHONPATH");
  for (size_t a = 0; a <= pp.size();) {
    const size_t b = pp.find(':', a);
    const std::string part = pp.substr(a, b == std::string::npos ? std::string::npos : b - a);
    if (!part.empty()) site.push_back(part);
    if (b == std::string::npos) break;
    a = b + 1;
  }
  auto add_glob = [&](const std::string& pattern) {
    for (auto& d : glob_dirs(pattern)) site.push_back(d);
  };
  for (const char* var : {"VIRTUAL_ENV", "CONDA_PREFIX"})
    if (!env(var).empty()) add_glob(env(var) + "/lib/python3*/site-packages");
  if (!env("HOME").empty()) add_glob(env("HOME") + "/.local/lib/python3*/site-packages");
  add_glob("/usr/local/lib/python3*/dist-packages");
  add_glob("/usr/local/lib/python3*/site-packages");
  add_glob("/usr/lib/python3/dist-packages");
  add_glob("/opt/conda/lib/python3*/site-packages");
  for (const auto& sp : site) {
    if (!seen.insert(sp).second) continue;
    out.push_back(sp + "/nvidia/cu13/lib/libcublas.so.13");
    out.push_back(sp + "/nvidia/cublas/lib/libcublas.so.12");
  }
  return out;
}

Library load(const std::vector<std::string>& candidates) {
  Library r;
  std::string missing, failed;
  for (const auto& path : candidates) {
    const bool absolute = path.find('/') != std::string::npos;
    if (absolute && !exists(path)) {
      missing += (missing.empty() ? "" : ", ") + path;
      continue;
    }
    if (absolute) {
      // libcublas.so.N needs libcublasLt.so.N: open the one beside it first where there is one.
      const size_t slash = path.rfind('/'), dot = path.find(".so", slash);
      if (dot != std::string::npos) {
        const std::string lt = path.substr(0, slash + 1) + "libcublasLt" + path.substr(dot);
        if (exists(lt)) dlopen(lt.c_str(), RTLD_NOW | RTLD_GLOBAL);
      }
    }
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      if (absolute) failed += "; " + path + ": " + (e ? e : "dlopen failed");
      else missing += (missing.empty() ? "" : ", ") + path;
      continue;
    }
    Api a;
    std::string absent;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) absent += (absent.empty() ? "" : ", ") + std::string(name);
    };
    sym(a.create, "cublasCreate_v2");
    sym(a.destroy, "cublasDestroy_v2");
    sym(a.set_stream, "cublasSetStream_v2");
    sym(a.set_math_mode, "cublasSetMathMode");
    sym(a.get_version, "cublasGetVersion_v2");
    sym(a.gemm_ex, "cublasGemmEx");
    if (!absent.empty()) {
      failed += "; " + path + ": not cuBLAS (no " + absent + ")";
      dlclose(lib);
      continue;
    }
    a.status_string = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "cublasGetStatusString"));
    r.lib = lib;
    r.path = path;
    r.api = a;
    return r;
  }
  r.error = "cuBLAS not found (the CUDA backend's GEMMs use it): searched " + (missing.empty() ? std::string("nothing") : missing) +
            failed +
            ". Install cuBLAS 12 or 13 (the CUDA toolkit's libcublas, or pip install nvidia-cublas-cu12 / nvidia-cublas), "
            "or set SPINLM_CUBLAS=/path/to/libcublas.so.12; SPINLM_CUDA_GEMM=tiled uses the slower built-in GEMM instead";
  return r;
}

GemmCall plan(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  // Row-major X[r, c] with leading dimension ld is the column-major X^T[c, r] with the same ld.
  // Row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T. The stored B (row-major
  // [k, n], or [n, k] when trans_b) read column-major is B^T (or B): cuBLAS's op on it is N (or T).
  GemmCall g;
  g.transa = trans_b ? 1 : 0;
  g.transb = trans_a ? 1 : 0;
  g.m = n;
  g.n = m;
  g.k = k;
  g.lda = ldb;
  g.ldb = lda;
  g.ldc = ldc;
  g.first_is_b = true;
  return g;
}

void reference_gemm(const GemmCall& g, float alpha, const float* first, const float* second, float beta, float* c) {
  // C(i, j) = alpha sum_l opA(i, l) opB(l, j) + beta C(i, j), column-major: X(i, j) = X[i + j ld].
  for (int64_t j = 0; j < g.n; ++j)
    for (int64_t i = 0; i < g.m; ++i) {
      double acc = 0;
      for (int64_t l = 0; l < g.k; ++l) {
        const float a = g.transa ? first[l + i * g.lda] : first[i + l * g.lda];
        const float b = g.transb ? second[j + l * g.ldb] : second[l + j * g.ldb];
        acc += static_cast<double>(a) * b;
      }
      float& out = c[i + j * g.ldc];
      out = static_cast<float>(alpha * acc + (beta != 0.0f ? static_cast<double>(beta) * out : 0.0));
    }
}

std::vector<std::string> lt_paths(const std::vector<std::string>& cublas_candidates) {
  std::vector<std::string> out;
  for (const auto& p : cublas_candidates) {
    const size_t slash = p.rfind('/');
    const size_t base = slash == std::string::npos ? 0 : slash + 1;
    const size_t at = p.find("libcublas", base);
    if (at != base) continue;  // SPINLM_CUBLAS may name a file of another name: no Lt beside it known
    out.push_back(p.substr(0, base) + "libcublasLt" + p.substr(base + 9));
  }
  return out;
}

LtLibrary load_lt(const std::vector<std::string>& candidates) {
  LtLibrary r;
  std::string tried;
  for (const auto& path : candidates) {
    if (path.find('/') != std::string::npos && !exists(path)) continue;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) continue;
    LtApi a;
    std::string absent;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) absent += (absent.empty() ? "" : ", ") + std::string(name);
    };
    sym(a.create, "cublasLtCreate");
    sym(a.destroy, "cublasLtDestroy");
    sym(a.desc_create, "cublasLtMatmulDescCreate");
    sym(a.desc_destroy, "cublasLtMatmulDescDestroy");
    sym(a.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(a.layout_create, "cublasLtMatrixLayoutCreate");
    sym(a.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(a.pref_create, "cublasLtMatmulPreferenceCreate");
    sym(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(a.matmul, "cublasLtMatmul");
    if (!absent.empty()) {
      tried += "; " + path + ": not cuBLASLt (no " + absent + ")";
      dlclose(lib);
      continue;
    }
    r.lib = lib;
    r.path = path;
    r.api = a;
    return r;
  }
  r.error = "no libcublasLt beside cuBLAS" + tried;
  return r;
}

LtCall lt_plan(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  // The cublasGemmEx call of plan(), as cuBLASLt layouts: a column-major operand stored with op T is
  // [k, m] (rows x cols) in memory, with op N [m, k].
  const GemmCall g = plan(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  LtCall c;
  c.transa = g.transa;
  c.transb = g.transb;
  auto u = [](int64_t x) { return static_cast<uint64_t>(x); };
  c.a = g.transa ? LtLayout{u(g.k), u(g.m), g.lda} : LtLayout{u(g.m), u(g.k), g.lda};
  c.b = g.transb ? LtLayout{u(g.n), u(g.k), g.ldb} : LtLayout{u(g.k), u(g.n), g.ldb};
  c.c = LtLayout{u(g.m), u(g.n), g.ldc};
  return c;
}

bool reference_lt(const LtCall& g, double alpha, const float* a, const float* b, double beta, float* c) {
  const uint64_t m = g.transa ? g.a.cols : g.a.rows, ka = g.transa ? g.a.rows : g.a.cols;
  const uint64_t kb = g.transb ? g.b.cols : g.b.rows, n = g.transb ? g.b.rows : g.b.cols;
  if (ka != kb || g.c.rows != m || g.c.cols != n) return false;
  for (const LtLayout* l : {&g.a, &g.b, &g.c})
    if (l->ld < 0 || static_cast<uint64_t>(l->ld) < (l->rows ? l->rows : 1)) return false;
  auto at = [](const float* x, const LtLayout& l, uint64_t i, uint64_t j) { return static_cast<double>(x[i + j * l.ld]); };
  for (uint64_t j = 0; j < n; ++j)
    for (uint64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (uint64_t l = 0; l < ka; ++l)
        acc += (g.transa ? at(a, g.a, l, i) : at(a, g.a, i, l)) * (g.transb ? at(b, g.b, j, l) : at(b, g.b, l, j));
      float& out = c[i + j * g.c.ld];
      out = static_cast<float>(alpha * acc + (beta != 0.0 ? beta * out : 0.0));
    }
  return true;
}

bool LtKey::operator<(const LtKey& o) const {
  return std::tie(m, n, k, lda, ldb, ldc, transa, transb, a_type, b_type, alpha_one, beta_zero) <
         std::tie(o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.transa, o.transb, o.a_type, o.b_type, o.alpha_one, o.beta_zero);
}

}  // namespace spinlm::cuda::blas
