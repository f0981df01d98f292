// The run-time choice of the CPU launchers' loops (cpu_path.h).
#include "cpu_path.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace nerfx::cpu {
namespace {

// NERFX_CPU_PATH as a choice; nullptr's place for a value it does not know.
enum class Asked { kAuto, kAvx2, kPortable, kUnknown };

Asked asked(const char** value) {
  const char* v = std::getenv("NERFX_CPU_PATH");
  *value = v;
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return Asked::kAuto;
  if (std::strcmp(v, "avx2") == 0) return Asked::kAvx2;
  if (std::strcmp(v, "portable") == 0) return Asked::kPortable;
  return Asked::kUnknown;
}

Asked checked_asked() {
  const char* value = nullptr;
  const Asked a = asked(&value);
  TORCH_CHECK(a != Asked::kUnknown, "NERFX_CPU_PATH must be \"auto\", \"avx2\" or \"portable\", "
              "got \"", value, "\"");
  return a;
}

}  // namespace

bool avx2_available() {
#if NERFX_CPU_AVX2_BUILT
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool use_avx2() { return checked_asked() != Asked::kPortable && avx2_available(); }

bool avx2_auto() { return checked_asked() == Asked::kAuto && avx2_available(); }

bool avx2_forced() { return checked_asked() == Asked::kAvx2 && avx2_available(); }

const char* path_name() {  // never raises: build_info reports a bad value instead
  const char* value = nullptr;
  switch (asked(&value)) {
    case Asked::kUnknown: return "none: NERFX_CPU_PATH must be auto, avx2 or portable";
    case Asked::kPortable: return "portable";
    default: return avx2_available() ? "avx2" : "portable";
  }
}

}  // namespace nerfx::cpu
