// The CPU Adam step's AVX-512 loop for float tables (adam_cpu_avx512.h): one cache line of each
// array a batch, in order, a branch per line.
//
// Why this shape: at the touch rates training has, the line of 16 entries a batch covers is
// touched more often than not (1 - 0.9^8 = 57 % of lines at 10 % of rows), and the hardware's
// stream prefetchers pull the untouched lines of every array anyway, so the kernel is bound by
// the bytes of the arrays it walks, not by their arithmetic (a batch's sqrt and two divisions
// take a fraction of a line's transfer). What it saves over the AVX2 loop (adam_cpu.cpp): no
// listing pass, no blends (a masked store writes only the touched lanes, so an untouched lane
// keeps its bits by not being written), and half the batches.
// GCC notes that 64-byte vectors change the calling convention without AVX-512: only inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "adam/adam_cpu_avx512.h"

#include "cpu_path.h"

#if NERFX_CPU_AVX2_BUILT
#include <immintrin.h>

#include <cstring>

namespace nerfx {

// 16 float lanes (a GCC vector): the type adam_update_by computes a batch in.
typedef float Floats16 __attribute__((vector_size(64)));

template <>
__attribute__((target("avx512f"))) inline Floats16 sqrt_of(Floats16 v) {
  return Floats16(_mm512_sqrt_ps(__m512(v)));
}

namespace adam {
namespace {

#define NERFX_AVX512 __attribute__((target("avx512f"), flatten))

// Entries [begin, end) rounded down to whole lines of 16; returns where the lines stopped (the
// caller steps the rest one by one).
NERFX_AVX512 int64_t step_lines(int64_t begin, int64_t end, const Line& a,
                                const Settings<float>& s, const float* pairs, int32_t last,
                                float inv_scale) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1), last_row = _mm512_set1_epi32(last);
  // The even and odd floats of two registers of (step size, bc2_sqrt) pairs.
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                          30);
  const __m512i odds = _mm512_add_epi32(evens, one);
  const auto* pair_base = reinterpret_cast<const double*>(pairs);
  float* __restrict__ param = a.param;
  const float* __restrict__ grad = a.grad;
  float* __restrict__ exp_avg = a.exp_avg;
  float* __restrict__ exp_avg_sq = a.exp_avg_sq;
  int32_t* __restrict__ step = a.step;
  int64_t j = begin;
  for (; j + 16 <= end; j += 16) {
    const __m512 g = _mm512_loadu_ps(grad + j);
    const __mmask16 touched = _mm512_cmp_ps_mask(g, zero, _CMP_NEQ_UQ);  // -0.0 == 0: untouched
    if (touched == 0) continue;
    __m512i t = _mm512_loadu_si512(step + j);
    t = _mm512_mask_add_epi32(t, touched, t, one);
    _mm512_mask_storeu_epi32(step + j, touched, t);
    // Each lane's row of the step's table: (lr / bc1[t], bc2_sqrt[t]), t saturated at `last`.
    const __m512i rows = _mm512_min_epi32(t, last_row);
    const __m512 low = _mm512_castpd_ps(
        _mm512_i32gather_pd(_mm512_castsi512_si256(rows), pair_base, 8));
    const __m512 high = _mm512_castpd_ps(
        _mm512_i32gather_pd(_mm512_extracti64x4_epi64(rows, 1), pair_base, 8));
    const Floats16 step_size = Floats16(_mm512_permutex2var_ps(low, evens, high));
    const Floats16 bc2_sqrt = Floats16(_mm512_permutex2var_ps(low, odds, high));
    Floats16 p = Floats16(_mm512_loadu_ps(param + j));
    Floats16 m = Floats16(_mm512_loadu_ps(exp_avg + j));
    Floats16 v = Floats16(_mm512_loadu_ps(exp_avg_sq + j));
    adam_update_by(Floats16(g) * inv_scale, step_size, bc2_sqrt, s, p, m, v);
    _mm512_mask_storeu_ps(param + j, touched, __m512(p));
    _mm512_mask_storeu_ps(exp_avg + j, touched, __m512(m));
    _mm512_mask_storeu_ps(exp_avg_sq + j, touched, __m512(v));
  }
  return j;
}

#undef NERFX_AVX512

}  // namespace

bool avx512_available() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

int64_t step_lines_avx512(int64_t begin, int64_t end, const Line& arrays,
                          const Settings<float>& settings, const float* pairs, int32_t last,
                          float inv_scale) {
  return step_lines(begin, end, arrays, settings, pairs, last, inv_scale);
}

}  // namespace adam
}  // namespace nerfx

#else  // no x86-64 vector loops in this build

namespace nerfx::adam {

bool avx512_available() { return false; }

int64_t step_lines_avx512(int64_t begin, int64_t, const Line&, const Settings<float>&,
                          const float*, int32_t, float) {
  return begin;
}

}  // namespace nerfx::adam

#endif
