// Hash-grid encoding on the CPU, AVX2 loops: float32 x and parameters, D = 3, F = 2 (the
// training case), eight points of one level per step. The math is the header's locate_cell,
// gather_cell and backward_cell (nerfx/hashgrid.h) with the same roundings in the same order:
// clamp, scale, floor, the last cell for x = 1, frac = pos - corner, each weight the product
// ((a_0 * a_1) * a_2) of the factors (frac or 1 - frac), rows by the same uint32 arithmetic (dense:
// strides of resolution + 1; hashed: XOR of the products with the primes, masked); the forward
// sums weight * feature from 0 in corner order, the backward adds weight * grad_out to the rows in
// point order, then corner order. No fused multiply-add anywhere, so the results are the portable
// loops' bit for bit (a NaN in x gives NaN outputs on both; the rows it touches may differ).
//
// Rows are fetched ahead: the cells of the points 4 steps on are located and their rows
// prefetched before the current step's are gathered (forward) or added to (backward).
//
// Compiled for AVX2 between NERFX_AVX2_FUNCTIONS_BEGIN and _END (cpu_path.h says how).
#include "hashgrid/hashgrid.h"
#include "cpu_path.h"

#if NERFX_CPU_AVX2_BUILT
#include <immintrin.h>

#include <cstdint>
#include <cstring>

NERFX_AVX2_FUNCTIONS_BEGIN

namespace nerfx::hashgrid {
namespace {

constexpr int kLanes = 8;    // points per step
constexpr int kCorners = 8;  // of a 3-D cell

// One level's geometry as the vector loops use it.
struct Level {
  int index, n_levels;
  __m256 res, res_minus_1;  // resolution, resolution - 1 (floats, exact)
  bool dense;
  __m256i stride1, stride2;  // dense: (res + 1), (res + 1)^2 (uint32)
  __m256i mask;              // hashed: n_rows - 1

  Level(const Levels& levels, int level) : index(level), n_levels(levels.n_levels) {
    const uint32_t r = levels.resolutions[level];
    const uint32_t n_rows = uint32_t(levels.offsets[level + 1] - levels.offsets[level]);
    res = _mm256_set1_ps(float(r));
    res_minus_1 = _mm256_set1_ps(float(r - 1));
    dense = levels.dense[level];
    stride1 = _mm256_set1_epi32(int(r + 1));
    stride2 = _mm256_set1_epi32(int((r + 1) * (r + 1)));
    mask = _mm256_set1_epi32(int(n_rows - 1));
  }
};

// The cells of 8 points: each corner's rows and weights, lane j for point j (corner c's bit d is
// the upper vertex along axis d, as in the header).
struct Cells {
  alignas(32) uint32_t rows[kCorners][kLanes];
  alignas(32) float weights[kCorners][kLanes];
};

// The x, y and z of 8 points stored as [x0 y0 z0 x1 ... z7] (24 floats at p).
inline void load_points(const float* p, __m256 (&axis)[3]) {
  const __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16);
  // Each axis gathered by two blends into a lane order that one permute puts right.
  const __m256 x = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x92), v2, 0x24);
  const __m256 y = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x24), v2, 0x49);
  const __m256 z = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x49), v2, 0x92);
  axis[0] = _mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
  axis[1] = _mm256_permutevar8x32_ps(y, _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
  axis[2] = _mm256_permutevar8x32_ps(z, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
}

// Points [i, i + n) of xs ([N, 3]), n <= 8; the lanes past n get the point (0, 0, 0).
inline void load_points(const float* xs, int64_t i, int64_t n, __m256 (&axis)[3]) {
  if (n == kLanes) return load_points(xs + i * 3, axis);
  alignas(32) float part[3 * kLanes] = {};
  std::memcpy(part, xs + i * 3, size_t(n) * 3 * sizeof(float));
  load_points(part, axis);
}

// locate_cell for 8 points at once.
inline void locate(const __m256 (&x)[3], const Level& level, Cells& cells) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  __m256 lower[3], upper[3];  // the weight factors 1 - frac and frac
  __m256i base[3];
  for (int d = 0; d < 3; ++d) {
    // clamp_unit: min then max with x second, so a NaN stays NaN (as in the header).
    const __m256 pos = _mm256_mul_ps(_mm256_max_ps(zero, _mm256_min_ps(one, x[d])), level.res);
    // floor, then the last cell for x = 1 (a NaN's corner becomes res - 1: a row inside the
    // table; its frac, weights and outputs are NaN all the same).
    const __m256 corner = _mm256_min_ps(
        _mm256_round_ps(pos, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), level.res_minus_1);
    base[d] = _mm256_cvttps_epi32(corner);
    upper[d] = _mm256_sub_ps(pos, corner);
    lower[d] = _mm256_sub_ps(one, upper[d]);
  }
  // Rows of the 4 corners in the xy plane, then along z.
  __m256i xy[4], z[2];
  if (level.dense) {
    const __m256i one_i = _mm256_set1_epi32(1);
    const __m256i r0 = base[0], r1 = _mm256_mullo_epi32(base[1], level.stride1);
    const __m256i r0u = _mm256_add_epi32(r0, one_i), r1u = _mm256_add_epi32(r1, level.stride1);
    xy[0] = _mm256_add_epi32(r0, r1);
    xy[1] = _mm256_add_epi32(r0u, r1);
    xy[2] = _mm256_add_epi32(r0, r1u);
    xy[3] = _mm256_add_epi32(r0u, r1u);
    z[0] = _mm256_mullo_epi32(base[2], level.stride2);
    z[1] = _mm256_add_epi32(z[0], level.stride2);
    for (int c = 0; c < kCorners; ++c) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(cells.rows[c]),
                         _mm256_add_epi32(xy[c & 3], z[c >> 2]));
    }
  } else {
    const __m256i p1 = _mm256_set1_epi32(int(2654435761u)), p2 = _mm256_set1_epi32(805459861);
    const __m256i h0 = base[0], h0u = _mm256_add_epi32(h0, _mm256_set1_epi32(1));
    const __m256i h1 = _mm256_mullo_epi32(base[1], p1), h1u = _mm256_add_epi32(h1, p1);
    xy[0] = _mm256_xor_si256(h0, h1);
    xy[1] = _mm256_xor_si256(h0u, h1);
    xy[2] = _mm256_xor_si256(h0, h1u);
    xy[3] = _mm256_xor_si256(h0u, h1u);
    z[0] = _mm256_mullo_epi32(base[2], p2);
    z[1] = _mm256_add_epi32(z[0], p2);
    for (int c = 0; c < kCorners; ++c) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(cells.rows[c]),
                         _mm256_and_si256(_mm256_xor_si256(xy[c & 3], z[c >> 2]), level.mask));
    }
  }
  // The header's w = ((1 * a_0) * a_1) * a_2, where 1 * a_0 = a_0 exactly.
  __m256 w01[4];
  for (int c = 0; c < 4; ++c) {
    w01[c] = _mm256_mul_ps((c & 1) ? upper[0] : lower[0], (c & 2) ? upper[1] : lower[1]);
  }
  for (int c = 0; c < kCorners; ++c) {
    _mm256_store_ps(cells.weights[c], _mm256_mul_ps(w01[c & 3], (c & 4) ? upper[2] : lower[2]));
  }
}

// Points of the step that starts at i: 8, fewer at the end, 0 past it (no std::min: nothing
// from another header is instantiated here).
inline int64_t lanes(int64_t i, int64_t end) {
  return end - i >= kLanes ? kLanes : (end > i ? end - i : 0);
}

// Lanes 0-3 (part 0) or 4-7 (part 1) of v, each twice: the layout of 4 points' [F = 2] rows.
template <int part>
inline __m256 pairs(__m256 v) {
  return _mm256_permutevar8x32_ps(v, part == 0 ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                                               : _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
}

// 4 rows of 2 floats (8 bytes each) at table + 2 * rows[k], k < 4, by 8-byte loads: on Zen 3
// the forward took about 9 % less time than with a 4-lane vgatherdpd (benches/RESULTS.md,
// 2026-12-04).
inline __m128d load_row(const float* table, uint32_t row) {
  double pair;  // memcpy: the bytes of 2 floats, read without type punning
  std::memcpy(&pair, table + int64_t(row) * 2, sizeof(pair));
  return _mm_set_sd(pair);
}
inline __m256 load_rows(const float* table, const uint32_t* rows) {
  const __m128d lo = _mm_unpacklo_pd(load_row(table, rows[0]), load_row(table, rows[1]));
  const __m128d hi = _mm_unpacklo_pd(load_row(table, rows[2]), load_row(table, rows[3]));
  return _mm256_castpd_ps(_mm256_set_m128d(hi, lo));
}

// gather_cell of 8 located points: out of point j at outs + j * stride ([2] each), n <= 8.
inline void gather(const Cells& cells, const float* table, int64_t n, float* outs,
                   int64_t stride) {
  __m256 acc_lo = _mm256_setzero_ps(), acc_hi = _mm256_setzero_ps();
  for (int c = 0; c < kCorners; ++c) {
    const __m256 w = _mm256_load_ps(cells.weights[c]);
    const __m256 lo = load_rows(table, cells.rows[c]);
    const __m256 hi = load_rows(table, cells.rows[c] + 4);
    acc_lo = _mm256_add_ps(acc_lo, _mm256_mul_ps(pairs<0>(w), lo));
    acc_hi = _mm256_add_ps(acc_hi, _mm256_mul_ps(pairs<1>(w), hi));
  }
  if (n == kLanes && stride == 2) {  // 8 rows side by side
    _mm256_storeu_ps(outs, acc_lo);
    _mm256_storeu_ps(outs + kLanes, acc_hi);
    return;
  }
  alignas(32) float out[2 * kLanes];
  _mm256_store_ps(out, acc_lo);
  _mm256_store_ps(out + kLanes, acc_hi);
  for (int64_t j = 0; j < n; ++j) std::memcpy(outs + j * stride, out + 2 * j, 2 * sizeof(float));
}

// Steps ahead whose rows are prefetched: each step is located (and its rows prefetched) 4 steps
// (32 points) before it is gathered or added to. (Measured at 1 thread, T = 2^19, against no
// prefetching: forward 37 -> 21-23 ms, parameter gradient 60 -> 47 ms in medians; 1, 2 and 8
// steps ahead did no better than 4.)
constexpr int kAhead = 4;

// Points [begin, end) of xs 8 at a time: each step located into a ring of cells, then
// ahead(cells, n) (the prefetches) at once and visit(cells, i, n) for the points [i, i + n)
// kAhead steps later.
template <typename Ahead, typename Visit>
inline void pipelined(const float* xs, const Level& level, int64_t begin, int64_t end,
                      Ahead ahead, Visit visit) {
  constexpr int kRing = kAhead + 1;
  Cells cells[kRing];
  __m256 x[3];
  const int64_t steps = (end - begin + kLanes - 1) / kLanes;
  const auto prepare = [&](int64_t s) {
    const int64_t i = begin + s * kLanes, n = lanes(i, end);
    load_points(xs, i, n, x);
    locate(x, level, cells[s % kRing]);
    ahead(cells[s % kRing], n);
  };
  for (int64_t s = 0; s < kAhead && s < steps; ++s) prepare(s);
  for (int64_t s = 0; s < steps; ++s) {
    if (s + kAhead < steps) prepare(s + kAhead);
    const int64_t i = begin + s * kLanes;
    visit(cells[s % kRing], i, lanes(i, end));
  }
}

}  // namespace

void forward_level_avx2(const float* xs, const float* table, const Levels& levels, int level,
                        int64_t begin, int64_t end, float* outs, int64_t out_stride) {
  const Level geometry(levels, level);
  pipelined(
      xs, geometry, begin, end,
      [&](const Cells& cells, int64_t n) {
        for (int c = 0; c < kCorners; ++c) {
          for (int64_t j = 0; j < n; ++j) {
            __builtin_prefetch(table + int64_t(cells.rows[c][j]) * 2, 0);
          }
        }
      },
      [&](const Cells& cells, int64_t i, int64_t n) {
        gather(cells, table, n, outs + i * out_stride, out_stride);
      });
}

namespace {

// The parameter gradient of one level's points [begin, end) into the rows [row_begin, row_begin
// + span) alone; kWholeLevel: the task owns every row of the level, so no row is checked.
template <bool kWholeLevel>
void add_level_gradient(const float* xs, const float* gout, int64_t gout_stride,
                        const Level& geometry, int64_t begin, int64_t end, float* gtable,
                        uint32_t row_begin, uint32_t span) {
  const auto owned = [row_begin, span](uint32_t row) {
    return kWholeLevel || row - row_begin < span;
  };
  pipelined(
      xs, geometry, begin, end,
      [&](const Cells& cells, int64_t n) {
        for (int c = 0; c < kCorners; ++c) {
          for (int64_t j = 0; j < n; ++j) {
            const uint32_t row = cells.rows[c][j];
            // Only this task's rows: a prefetch for writing pulls the line from other cores.
            if (owned(row)) __builtin_prefetch(gtable + int64_t(row) * 2, 1);
          }
        }
      },
      [&](const Cells& cells, int64_t i, int64_t n) {
        // backward_cell's parameter gradient: weight * grad_out added to each corner's row,
        // point by point, corner by corner (the header's order).
        for (int64_t j = 0; j < n; ++j) {
          const float* g = gout + (i + j) * gout_stride;
          const float g0 = g[0], g1 = g[1];
          for (int c = 0; c < kCorners; ++c) {
            const uint32_t row = cells.rows[c][j];
            if (!owned(row)) continue;  // another task's row
            const float w = cells.weights[c][j];
            float* dst = gtable + int64_t(row) * 2;
            dst[0] += w * g0;
            dst[1] += w * g1;
          }
        }
      });
}

}  // namespace

void backward_params_level_avx2(const float* xs, const float* gout, int64_t gout_stride,
                                const Levels& levels, int level, int64_t begin, int64_t end,
                                float* gtable, uint32_t row_begin, uint32_t row_end) {
  const Level geometry(levels, level);
  const uint32_t n_rows = uint32_t(levels.offsets[level + 1] - levels.offsets[level]);
  if (row_begin == 0 && row_end == n_rows) {
    add_level_gradient<true>(xs, gout, gout_stride, geometry, begin, end, gtable, 0, n_rows);
  } else {
    add_level_gradient<false>(xs, gout, gout_stride, geometry, begin, end, gtable, row_begin,
                              row_end - row_begin);
  }
}

namespace {

// dst[j * dst_stride + k] = src[k * src_stride + j] for j, k < 4: a 4 x 4 block of 8-byte pairs
// (one point's 2 features at one level) transposed in registers.
inline void transpose4(const double* src, int64_t src_stride, double* dst, int64_t dst_stride) {
  const __m256d a0 = _mm256_loadu_pd(src), a1 = _mm256_loadu_pd(src + src_stride);
  const __m256d a2 = _mm256_loadu_pd(src + 2 * src_stride);
  const __m256d a3 = _mm256_loadu_pd(src + 3 * src_stride);
  const __m256d t0 = _mm256_unpacklo_pd(a0, a1), t1 = _mm256_unpackhi_pd(a0, a1);
  const __m256d t2 = _mm256_unpacklo_pd(a2, a3), t3 = _mm256_unpackhi_pd(a2, a3);
  _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(dst + dst_stride, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(dst + 2 * dst_stride, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(dst + 3 * dst_stride, _mm256_permute2f128_pd(t1, t3, 0x31));
}

// Points [begin, end) moved between the layouts [L, N, 2] and [N, L * 2], 4 points by 4 levels
// at a time (the rest one pair at a time). to_points: from level-major to point-major.
void transpose_levels(const float* src, float* dst, int L, int64_t n_points, int64_t begin,
                      int64_t end, bool to_points) {
  const double* s = reinterpret_cast<const double*>(src);
  double* d = reinterpret_cast<double*>(dst);
  // (point i, level l) of the level-major side, of the point-major side
  const auto by_level = [n_points](int64_t i, int l) { return int64_t(l) * n_points + i; };
  const auto by_point = [L](int64_t i, int l) { return i * L + l; };
  const auto move_pair = [&](int64_t i, int l) {
    if (to_points) std::memcpy(d + by_point(i, l), s + by_level(i, l), sizeof(double));
    else std::memcpy(d + by_level(i, l), s + by_point(i, l), sizeof(double));
  };
  const int L4 = L - L % 4;
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    if (to_points && (i - begin) % 8 == 0) {
      // Level-major reads are L streams at once, more than the hardware prefetcher follows:
      // ask for each stream's line 4 lines (32 points) ahead.
      for (int l = 0; l < L; ++l) {
        if (i + 32 < end) __builtin_prefetch(s + by_level(i + 32, l), 0);
      }
    }
    for (int l = 0; l < L4; l += 4) {
      if (to_points) {
        transpose4(s + by_level(i, l), n_points, d + by_point(i, l), L);
      } else {
        transpose4(s + by_point(i, l), L, d + by_level(i, l), n_points);
      }
    }
    for (int l = L4; l < L; ++l) {
      for (int64_t j = i; j < i + 4; ++j) {
        move_pair(j, l);
      }
    }
  }
  for (; i < end; ++i) {
    for (int l = 0; l < L; ++l) {
      move_pair(i, l);
    }
  }
}

}  // namespace

void level_major_to_points_avx2(const float* by_level, int L, int64_t n_points, int64_t begin,
                                int64_t end, float* outs) {
  transpose_levels(by_level, outs, L, n_points, begin, end, true);
}

void points_to_level_major_avx2(const float* outs, int L, int64_t n_points, int64_t begin,
                                int64_t end, float* by_level) {
  transpose_levels(outs, by_level, L, n_points, begin, end, false);
}

}  // namespace nerfx::hashgrid

NERFX_AVX2_FUNCTIONS_END

#else  // no AVX2 loops in this build: cpu::use_avx2() is false, so these are never called

namespace nerfx::hashgrid {

void forward_level_avx2(const float*, const float*, const Levels&, int, int64_t, int64_t,
                        float*, int64_t) {
  TORCH_CHECK(false, "hash_encode: this build has no AVX2 loops");
}
void backward_params_level_avx2(const float*, const float*, int64_t, const Levels&, int, int64_t,
                                int64_t, float*, uint32_t, uint32_t) {
  TORCH_CHECK(false, "hash_encode_backward: this build has no AVX2 loops");
}
void level_major_to_points_avx2(const float*, int, int64_t, int64_t, int64_t, float*) {
  TORCH_CHECK(false, "hash_encode: this build has no AVX2 loops");
}
void points_to_level_major_avx2(const float*, int, int64_t, int64_t, int64_t, float*) {
  TORCH_CHECK(false, "hash_encode_backward: this build has no AVX2 loops");
}

}  // namespace nerfx::hashgrid

#endif
