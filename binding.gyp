{
  "targets": [
    {
      "target_name": "spinlm",
      "sources": ["<!@(ls -1 native/*.cc native/cpu/*.cc)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-Wno-psabi"],
      "ldflags": ["-pthread"],
      "libraries": ["<!@(node scripts/build-deps.mjs --libs)"],
      "cflags": ["<!@(node scripts/build-deps.mjs --cflags)"]
    }
  ],
  "conditions": [
    ["'<!(node scripts/comm-deps.mjs --found)'=='1'", {
      "targets": [
        {
          "target_name": "spinlm_comm",
          "sources": ["native/comm/comm.cc", "native/comm/mpi.cc", "native/comm/nccl.cc"],
          "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
          "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
          "cflags_cc": ["-std=c++17", "-O2", "-fexceptions"],
          "cflags": ["<!@(node scripts/comm-deps.mjs --cflags)"],
          "libraries": ["<!@(node scripts/comm-deps.mjs --libs)"]
        }
      ]
    }]
  ]
}
