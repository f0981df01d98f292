// The CPU Adam step's line loops for float parameters and state (adam_cpu_lines.cpp): the loops
// adam_cpu.cpp takes for float tables, AVX-512 under NERFX_CPU_PATH=auto where the CPU has
// AVX-512F, AVX2 under "avx2" or without it (its baseline batches under "portable").
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
// entries left one by one. The AVX-512 loop needs avx512_available(), the AVX2 one a CPU with
// AVX2 (cpu::use_avx2()).
int64_t step_lines_avx512(int64_t begin, int64_t end, const Line& arrays,
                          const Settings<float>& settings, const float* pairs, int32_t last,
                          float inv_scale);
int64_t step_lines_avx2(int64_t begin, int64_t end, const Line& arrays,
                        const Settings<float>& settings, const float* pairs, int32_t last,
                        float inv_scale);

}  // namespace nerfx::adam
