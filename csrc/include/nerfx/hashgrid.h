// Multiresolution hash-grid encoding (Instant-NGP, Muller et al. 2022): the math of one point at
// one level, shared by the CPU and CUDA launchers. Templated on the number of input dimensions D,
// the features per level F, the compute type scalar_t (float or double) and the stored parameter
// type param_t (float, double or half).
//
// Layout of the flat parameter table: level l owns rows [offsets[l], offsets[l+1]) of a
// [n_rows, F] table. A level whose (resolution + 1)^D vertices fit its rows is indexed densely;
// otherwise it has exactly 2^log2_hashmap_size rows and vertices are hashed with the primes
// 1, 2654435761, 805459861 (XOR of the products, modulo the table size).
#pragma once

#include "nerfx/common.h"

namespace nerfx::hashgrid {

constexpr int kMaxLevels = 32;

// Per-level geometry of one encoding; small enough to pass by value to a CUDA kernel.
struct Levels {
  int n_levels;
  int64_t offsets[kMaxLevels + 1];  // first table row of each level; offsets[n_levels] = n_rows
  uint32_t resolutions[kMaxLevels];  // grid cells per axis at each level
  bool dense[kMaxLevels];            // true where every vertex has its own row
};

template <int D>
NERFX_HD inline uint64_t vertex_count(uint32_t resolution) {
  uint64_t n = 1;
  for (int d = 0; d < D; ++d) n *= uint64_t(resolution) + 1;
  return n;
}

// Row of the level's table that holds a grid vertex.
template <int D>
NERFX_HD inline uint32_t vertex_row(const uint32_t (&vertex)[D], uint32_t resolution,
                                    uint32_t n_rows, bool dense) {
  if (dense) {
    uint32_t row = 0, stride = 1;
    for (int d = 0; d < D; ++d) {
      row += vertex[d] * stride;
      stride *= resolution + 1;
    }
    return row;
  }
  constexpr uint32_t primes[3] = {1u, 2654435761u, 805459861u};
  uint32_t hash = 0;
  for (int d = 0; d < D; ++d) hash ^= vertex[d] * primes[d];
  return hash & (n_rows - 1);  // hashed levels have a power-of-two row count
}

// The 2^D corners of the cell that holds x at one level: their table rows, their trilinear
// (bilinear for D = 2) weights, and what the weights need for the input gradient.
template <int D, typename scalar_t>
struct Cell {
  static constexpr int kCorners = 1 << D;
  uint32_t rows[kCorners];
  scalar_t weights[kCorners];
  scalar_t frac[D];  // position inside the cell, in [0, 1]
  bool inside[D];    // x was inside [0, 1] (clamping passes no gradient otherwise)
};

template <int D, typename scalar_t>
NERFX_HD inline void locate_cell(const scalar_t* x, const Levels& levels, int level,
                                 Cell<D, scalar_t>& cell) {
  const uint32_t res = levels.resolutions[level];
  const uint32_t n_rows = uint32_t(levels.offsets[level + 1] - levels.offsets[level]);
  uint32_t base[D];
  for (int d = 0; d < D; ++d) {
    cell.inside[d] = x[d] >= scalar_t(0) && x[d] <= scalar_t(1);
    const scalar_t pos = clamp_unit(x[d]) * scalar_t(res);
    scalar_t corner = floor_of(pos);
    if (corner > scalar_t(res - 1)) corner = scalar_t(res - 1);  // x = 1 lies in the last cell
    base[d] = uint32_t(corner);
    cell.frac[d] = pos - corner;
  }
  for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
    uint32_t vertex[D];
    scalar_t w = scalar_t(1);
    for (int d = 0; d < D; ++d) {
      const bool upper = (c >> d) & 1;
      vertex[d] = base[d] + (upper ? 1u : 0u);
      w *= upper ? cell.frac[d] : scalar_t(1) - cell.frac[d];
    }
    cell.rows[c] = vertex_row<D>(vertex, res, n_rows, levels.dense[level]);
    cell.weights[c] = w;
  }
}

// Forward of a located cell: out[f] = sum over corners of weight * feature.
// table: the level's rows [n_rows, F], out: [F]
template <int D, int F, typename scalar_t, typename param_t>
NERFX_HD inline void gather_cell(const Cell<D, scalar_t>& cell, const param_t* table,
                                 scalar_t* out) {
  scalar_t acc[F];
  for (int f = 0; f < F; ++f) acc[f] = scalar_t(0);
  for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
    const param_t* feature = table + int64_t(cell.rows[c]) * F;
    for (int f = 0; f < F; ++f) acc[f] += cell.weights[c] * static_cast<scalar_t>(feature[f]);
  }
  for (int f = 0; f < F; ++f) out[f] = acc[f];
}

// Forward of one point at one level.  x: [D], params: the whole table, out: [F]
template <int D, int F, typename scalar_t, typename param_t>
NERFX_HD inline void encode_level(const scalar_t* x, const param_t* params, const Levels& levels,
                                  int level, scalar_t* out) {
  Cell<D, scalar_t> cell;
  locate_cell<D>(x, levels, level, cell);
  gather_cell<D, F>(cell, params + levels.offsets[level] * F, out);
}

// Both gradients of a located cell, visiting each corner once:
//  - where grad_table is not null, weight * grad_out ([F]) added to the corner's gradient row
//    with add(row, values): row[f] += values[f] for f < F (plain adds where rows are owned,
//    atomic adds where they are shared);
//  - where grad_x is not null, the input gradient added to it:
//    d weight / d frac_d = +-(product of the other factors), d frac_d / d x_d = resolution.
// table: the level's rows [n_rows, F] (read only for grad_x), grad_out: [F],
// grad_table: the level's gradient rows [n_rows, F] or nullptr, grad_x: [D] or nullptr.
template <int D, int F, typename scalar_t, typename param_t, typename Add>
NERFX_HD inline void backward_cell(const Cell<D, scalar_t>& cell, const param_t* table,
                                   uint32_t resolution, const scalar_t* grad_out,
                                   scalar_t* grad_table, Add add, scalar_t* grad_x) {
  const scalar_t res = scalar_t(resolution);
  for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
    const int64_t row = int64_t(cell.rows[c]) * F;
    if (grad_table != nullptr) {
      scalar_t values[F];
      for (int f = 0; f < F; ++f) values[f] = cell.weights[c] * grad_out[f];
      add(grad_table + row, values);
    }
    if (grad_x != nullptr) {
      scalar_t dot = scalar_t(0);  // grad_out . feature of this corner
      for (int f = 0; f < F; ++f) dot += grad_out[f] * static_cast<scalar_t>(table[row + f]);
      for (int d = 0; d < D; ++d) {
        if (!cell.inside[d]) continue;
        scalar_t dw = ((c >> d) & 1) ? scalar_t(1) : scalar_t(-1);
        for (int e = 0; e < D; ++e) {
          if (e == d) continue;
          dw *= ((c >> e) & 1) ? cell.frac[e] : scalar_t(1) - cell.frac[e];
        }
        grad_x[d] += dw * res * dot;
      }
    }
  }
}

// Both gradients of one point at one level, locating its cell once (see backward_cell).
// x: [D], params: the whole table, grad_out: [F], grad_params: the whole gradient table or
// nullptr, grad_x: [D] or nullptr.
template <int D, int F, typename scalar_t, typename param_t, typename Add>
NERFX_HD inline void backward_level(const scalar_t* x, const param_t* params, const Levels& levels,
                                    int level, const scalar_t* grad_out, scalar_t* grad_params,
                                    Add add, scalar_t* grad_x) {
  Cell<D, scalar_t> cell;
  locate_cell<D>(x, levels, level, cell);
  const int64_t first = levels.offsets[level] * F;
  backward_cell<D, F>(cell, params + first, levels.resolutions[level], grad_out,
                      grad_params != nullptr ? grad_params + first : nullptr, add, grad_x);
}

}  // namespace nerfx::hashgrid
