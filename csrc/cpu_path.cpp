// The run-time choice of the CPU launchers' loops (cpu_path.h).
#include "cpu_path.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace nerfx::cpu {

bool avx2_available() {
#if NERFX_CPU_AVX2_BUILT
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool use_avx2() {
  const char* forced = std::getenv("NERFX_CPU_PATH");
  if (forced != nullptr && std::strcmp(forced, "portable") == 0) return false;
  TORCH_CHECK(forced == nullptr || forced[0] == '\0' || std::strcmp(forced, "auto") == 0,
              "NERFX_CPU_PATH must be \"auto\" or \"portable\", got \"", forced, "\"");
  return avx2_available();
}

const char* path_name() {  // never raises: build_info reports a bad value instead
  const char* forced = std::getenv("NERFX_CPU_PATH");
  if (forced != nullptr && std::strcmp(forced, "portable") == 0) return "portable";
  if (forced != nullptr && forced[0] != '\0' && std::strcmp(forced, "auto") != 0) {
    return "none: NERFX_CPU_PATH must be auto or portable";
  }
  return avx2_available() ? "avx2" : "portable";
}

}  // namespace nerfx::cpu
