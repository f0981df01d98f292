// The CPU Adam step's line loops for float tables (adam_cpu_lines.h), AVX-512 and AVX2: one
// cache line of 16 entries of each array a batch, in order, a branch per line.
//
// Why this shape: at the touch rates training has, the line of 16 entries a batch covers is
// touched more often than not (1 - 0.9^8 = 57 % of lines at 10 % of rows), and the hardware's
// stream prefetchers pull the untouched lines of every array anyway, so the kernel is bound by
// the bytes of the arrays it walks, not by their arithmetic (a batch's sqrt and two divisions
// take a fraction of a line's transfer). AVX-512 writes only a line's touched lanes (masked
// stores, so an untouched lane keeps its bits by not being written). AVX2 steps a touched line in
// two halves of 8 and puts the old bits back in the untouched lanes (a blend before a full store,
// as the batches of adam_cpu.cpp do); its bias-correction lookups take one gather per half where
// the F = 2 rows share their counts, as training's do (on the AMD Zen 3 host of
// benches/RESULTS.md, the one-thread step spent a quarter of its time in gathers).
// GCC notes that 64-byte vectors change the calling convention without AVX-512: only inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "adam/adam_cpu_lines.h"

#include "cpu_path.h"

#if NERFX_CPU_AVX2_BUILT
#include <immintrin.h>

#include <cstring>

#include "adam/adam_simd.h"

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
NERFX_AVX512 int64_t step_lines_16(int64_t begin, int64_t end, const Line& a,
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

// The same in AVX2: a touched line in two halves of 8 lanes, blended.
__attribute__((target("avx2"), flatten)) int64_t step_lines_8(int64_t begin, int64_t end,
                                                              const Line& arrays,
                                                              const Settings<float>& settings,
                                                              const float* pairs, int32_t last,
                                                              float inv_scale) {
  // Local copies, which the stores below cannot alias: the values stay in registers.
  const Line a = arrays;
  const Settings<float> s = settings;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i last_row = _mm256_set1_epi32(last);
  int64_t j = begin;
  for (; j + 16 <= end; j += 16) {
    const __m256 g_line[2] = {_mm256_loadu_ps(a.grad + j), _mm256_loadu_ps(a.grad + j + 8)};
    // All ones where the gradient is not 0 (-0.0 == 0: untouched)
    const __m256 touched_line[2] = {_mm256_cmp_ps(g_line[0], zero, _CMP_NEQ_UQ),
                                    _mm256_cmp_ps(g_line[1], zero, _CMP_NEQ_UQ)};
    if (_mm256_movemask_ps(_mm256_or_ps(touched_line[0], touched_line[1])) == 0) continue;
    for (int half = 0; half < 2; ++half) {
      const int64_t k = j + 8 * half;
      const __m256 touched = touched_line[half];
      auto* counts = reinterpret_cast<__m256i*>(a.step + k);
      const __m256i t = _mm256_sub_epi32(_mm256_loadu_si256(counts), _mm256_castps_si256(touched));
      _mm256_storeu_si256(counts, t);
      Floats8 step_size, bc2_sqrt;
      gather_pairs_by_twos(pairs, Ints8(_mm256_min_epi32(t, last_row)), step_size, bc2_sqrt);
      const __m256 p_old = _mm256_loadu_ps(a.param + k), m_old = _mm256_loadu_ps(a.exp_avg + k),
                   v_old = _mm256_loadu_ps(a.exp_avg_sq + k);
      Floats8 p = Floats8(p_old), m = Floats8(m_old), v = Floats8(v_old);
      adam_update_by(Floats8(g_line[half]) * inv_scale, step_size, bc2_sqrt, s, p, m, v);
      _mm256_storeu_ps(a.param + k, _mm256_blendv_ps(p_old, __m256(p), touched));
      _mm256_storeu_ps(a.exp_avg + k, _mm256_blendv_ps(m_old, __m256(m), touched));
      _mm256_storeu_ps(a.exp_avg_sq + k, _mm256_blendv_ps(v_old, __m256(v), touched));
    }
  }
  return j;
}

}  // namespace

bool avx512_available() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

int64_t step_lines_avx512(int64_t begin, int64_t end, const Line& arrays,
                          const Settings<float>& settings, const float* pairs, int32_t last,
                          float inv_scale) {
  return step_lines_16(begin, end, arrays, settings, pairs, last, inv_scale);
}

int64_t step_lines_avx2(int64_t begin, int64_t end, const Line& arrays,
                        const Settings<float>& settings, const float* pairs, int32_t last,
                        float inv_scale) {
  return step_lines_8(begin, end, arrays, settings, pairs, last, inv_scale);
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

int64_t step_lines_avx2(int64_t begin, int64_t, const Line&, const Settings<float>&, const float*,
                        int32_t, float) {
  return begin;
}

}  // namespace nerfx::adam

#endif
