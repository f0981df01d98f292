// The CPU Adam step's AVX-512 loop (adam_cpu_avx512.cpp), for float parameters and state: the
// loop adam_cpu.cpp takes under NERFX_CPU_PATH=auto where the CPU has AVX-512F (its AVX2 loop
// under "avx2" or without it, its baseline one under "portable").
#pragma once

#include <cstdint>

#include "nerfx/adam.h"

namespace nerfx::adam {

// The float arrays of one tensor's step, n entries each.
struct Line {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int32_t* step;
};

// Whether the CPU running this process has AVX-512F and this build has the loop.
bool avx512_available();

// Steps entries [begin, end) in lines of 16 as update_entry does each entry (the same IEEE
// operations, so the same bits as a lone entry), the step size lr / bc1[t] and bc2_sqrt[t] of a
// count t read from pairs [last + 1, 2] (counts past `last` read row `last`, the saturated one).
// Returns where the whole lines ended (begin where the loop is not built); the caller steps the
// entries left one by one.
int64_t step_lines_avx512(int64_t begin, int64_t end, const Line& arrays,
                          const Settings<float>& settings, const float* pairs, int32_t last,
                          float inv_scale);

}  // namespace nerfx::adam
