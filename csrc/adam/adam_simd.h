// The SIMD vectors the CPU Adam loops compute in (adam_cpu.cpp, adam_cpu_lines.cpp): GCC vectors
// of float or double (elementwise arithmetic, scalar operands broadcast, `mask ? a : b` selects
// lanes), the vector sqrt adam_update_by needs for each, and the lookups of the step-size table.
// x86-64 with GCC or Clang only (NERFX_ADAM_SIMD); elsewhere the loops go entry by entry.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NERFX_ADAM_SIMD 1
// GCC notes that 32-byte vectors change the calling convention without AVX: only inlined here.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cstdint>

#include "nerfx/adam.h"

namespace nerfx {

// SIMD batches of state_t, Bytes wide: GCC vectors (elementwise arithmetic, scalar operands
// broadcast, `mask ? a : b` selects lanes).
typedef float Floats4 __attribute__((vector_size(16)));
typedef double Doubles2 __attribute__((vector_size(16)));
typedef float Floats8 __attribute__((vector_size(32)));
typedef double Doubles4 __attribute__((vector_size(32)));
typedef int32_t Ints4 __attribute__((vector_size(16)));  // the counts of a float batch
typedef int32_t Ints8 __attribute__((vector_size(32)));
typedef int64_t Longs2 __attribute__((vector_size(16)));  // the lanes of a double compare
typedef int64_t Longs4 __attribute__((vector_size(32)));

// Whether any lane of a compare's result is set (all ones): one movemask.
inline bool any_lane(Ints4 mask) { return _mm_movemask_ps(__m128(mask)) != 0; }
inline bool any_lane(Longs2 mask) { return _mm_movemask_pd(__m128d(mask)) != 0; }
__attribute__((target("avx2"))) inline bool any_lane(Ints8 mask) {
  return _mm256_movemask_ps(__m256(mask)) != 0;
}
__attribute__((target("avx2"))) inline bool any_lane(Longs4 mask) {
  return _mm256_movemask_pd(__m256d(mask)) != 0;
}

// (pairs[2 r], pairs[2 r + 1]) for r = rows[l] of every lane, into firsts and seconds: two
// gathers of four 8-byte pairs (half the elements of two float gathers), then a deinterleave.
inline void gather_pairs(const float* pairs, Ints4 rows, Floats4& firsts, Floats4& seconds) {
  for (int l = 0; l < 4; ++l) {
    firsts[l] = pairs[2 * rows[l]];
    seconds[l] = pairs[2 * rows[l] + 1];
  }
}
// 64-bit quarters [0 1 2 3] of v -> [0 2 1 3]
__attribute__((target("avx2"))) inline __m256 order(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}
__attribute__((target("avx2"))) inline void gather_pairs(const float* pairs, Ints8 rows,
                                                         Floats8& firsts, Floats8& seconds) {
  const __m256i all = __m256i(rows);
  const auto* base = reinterpret_cast<const double*>(pairs);
  // [f0 s0 f1 s1 | f2 s2 f3 s3] and [f4 s4 f5 s5 | f6 s6 f7 s7]
  const __m256 low = _mm256_castpd_ps(_mm256_i32gather_pd(base, _mm256_castsi256_si128(all), 8));
  const __m256 high =
      _mm256_castpd_ps(_mm256_i32gather_pd(base, _mm256_extracti128_si256(all, 1), 8));
  // [f0 f1 f4 f5 | f2 f3 f6 f7] -> [f0 f1 f2 f3 | f4 f5 f6 f7], the same for the seconds
  firsts = Floats8(order(_mm256_shuffle_ps(low, high, 0x88)));
  seconds = Floats8(order(_mm256_shuffle_ps(low, high, 0xDD)));
}

// The same, one gather of four pairs where lanes 2k and 2k + 1 read the same row (the two
// features of a hash table's F = 2 row, touched together, share their count); else gather_pairs.
__attribute__((target("avx2"))) inline void gather_pairs_by_twos(const float* pairs, Ints8 rows,
                                                                 Floats8& firsts,
                                                                 Floats8& seconds) {
  const __m256i all = __m256i(rows);
  const __m256i swapped = _mm256_shuffle_epi32(all, 0xB1);  // lanes 2k and 2k + 1 swapped
  if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(all, swapped)) != -1) {
    gather_pairs(pairs, rows, firsts, seconds);
    return;
  }
  const __m128i even_rows = _mm256_castsi256_si128(
      _mm256_permutevar8x32_epi32(all, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
  // [f0 s0 f2 s2 | f4 s4 f6 s6], the pairs of the even lanes' rows
  const __m256 quad = _mm256_castpd_ps(
      _mm256_i32gather_pd(reinterpret_cast<const double*>(pairs), even_rows, 8));
  firsts = Floats8(_mm256_permutevar8x32_ps(quad, _mm256_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6)));
  seconds = Floats8(_mm256_permutevar8x32_ps(quad, _mm256_setr_epi32(1, 1, 3, 3, 5, 5, 7, 7)));
}

// The vector sqrt the batches need (sqrt_of of a scalar is std::sqrt, which does not vectorise:
// it may set errno).
template <>
inline Floats4 sqrt_of(Floats4 v) {
  return Floats4(_mm_sqrt_ps(__m128(v)));
}
template <>
inline Doubles2 sqrt_of(Doubles2 v) {
  return Doubles2(_mm_sqrt_pd(__m128d(v)));
}
template <>
__attribute__((target("avx2"))) inline Floats8 sqrt_of(Floats8 v) {
  return Floats8(_mm256_sqrt_ps(__m256(v)));
}
template <>
__attribute__((target("avx2"))) inline Doubles4 sqrt_of(Doubles4 v) {
  return Doubles4(_mm256_sqrt_pd(__m256d(v)));
}

}  // namespace nerfx
#endif
