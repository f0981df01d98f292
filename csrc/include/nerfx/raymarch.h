// Occupancy-grid ray marching (Instant-NGP): ray-box clipping, cascade and cell lookup, the
// bitfield test and the DDA skip over empty cells, shared by the CPU and CUDA launchers.
//
// Grid: cascade c covers center +- half_size * 2^c with resolution^3 cells, cell (x, y, z) at
// flat index c * R^3 + (x * R + y) * R + z, one bit each (bit i % 8 of byte i / 8).
// Samples: with cone_angle = 0 the k-th candidate covers [t0 + (k + jitter) dt, ... + dt] on a
// fixed lattice (t0 = the ray's entry into the grid, or `near` if later); with cone_angle > 0 the
// step grows as dt = clamp(t * cone_angle, step_size, cell size). A candidate is emitted when its
// midpoint lies in an occupied cell; from an empty cell the march jumps to the cell's exit.
#pragma once

#include "nerfx/common.h"

namespace nerfx::raymarch {

struct GridGeometry {
  float center[3];
  float half_size[3];      // half extent of cascade 0
  float inv_half_size[3];  // 1 / half_size: lookups multiply rather than divide
  int resolution;
  int cascades;
};

NERFX_HD inline GridGeometry make_grid_geometry(const float* center, const float* half_size,
                                                int resolution, int cascades) {
  GridGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.center[a] = center[a];
    g.half_size[a] = half_size[a];
    g.inv_half_size[a] = 1.0f / half_size[a];
  }
  g.resolution = resolution;
  g.cascades = cascades;
  return g;
}

// a * b + c without contraction into an FMA, so CPU, CUDA and the PyTorch reference agree exactly.
NERFX_HD inline float mul_add(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(__fmul_rn(a, b), c);
#else
  return a * b + c;
#endif
}

// Entry and exit of the ray o + t d through the box lo..hi; false when it misses. Axis-parallel
// rays are handled without dividing by zero.
NERFX_HD inline bool clip_to_box(const float* o, const float* d, const float* lo, const float* hi,
                                 float& t_enter, float& t_exit) {
  t_enter = -INFINITY;
  t_exit = INFINITY;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0f) {
      if (o[a] < lo[a] || o[a] > hi[a]) return false;
      continue;
    }
    const float t1 = (lo[a] - o[a]) / d[a];
    const float t2 = (hi[a] - o[a]) / d[a];
    t_enter = max_of(t_enter, min_of(t1, t2));
    t_exit = min_of(t_exit, max_of(t1, t2));
  }
  return t_enter <= t_exit;
}

// The outermost cascade's box.
NERFX_HD inline void grid_box(const GridGeometry& g, float* lo, float* hi) {
  const float scale = float(1 << (g.cascades - 1));
  for (int a = 0; a < 3; ++a) {
    lo[a] = g.center[a] - g.half_size[a] * scale;
    hi[a] = g.center[a] + g.half_size[a] * scale;
  }
}

struct CellRef {
  int cascade;
  int cell[3];
  int64_t index;  // flat index into the bitfield's bits
};

// Smallest cascade holding p, and p's cell in it.
NERFX_HD inline CellRef locate(const GridGeometry& g, const float* p) {
  float u[3];
  float extent = 0.0f;
  for (int a = 0; a < 3; ++a) {
    u[a] = (p[a] - g.center[a]) * g.inv_half_size[a];
    extent = max_of(extent, fabsf(u[a]));
  }
  int cascade = 0;
  if (extent >= 1.0f && g.cascades > 1) {
    cascade = exponent_of(extent);  // extent = f * 2^exponent with f in [0.5, 1)
    cascade = cascade < g.cascades - 1 ? cascade : g.cascades - 1;
  }
  const float inv_scale = power_of_two(-cascade);
  CellRef ref{cascade, {0, 0, 0}, 0};
  int64_t index = cascade;
  for (int a = 0; a < 3; ++a) {
    // floor, then clamp to the grid: clamping first and truncating gives the same cell
    // without a floor (a library call or a long sequence on plain x86-64).
    const float cell = (u[a] * inv_scale + 1.0f) * 0.5f * float(g.resolution);
    const int c = int(min_of(max_of(cell, 0.0f), float(g.resolution - 1)));
    ref.cell[a] = c;
    index = index * g.resolution + c;
  }
  ref.index = index;
  return ref;
}

NERFX_HD inline bool occupied(const uint8_t* bitfield, int64_t index) {
  return (bitfield[index >> 3] >> (index & 7)) & 1;
}

// Blocks of 2^shift cells a side: block (x >> shift, y >> shift, z >> shift) of a cascade, flat
// index (c * Rb + bx) * Rb + by) * Rb + bz with Rb = R >> shift, one bit each as the cells'
// (shift 0: the cell itself, ref.index).
NERFX_HD inline int64_t block_index(const GridGeometry& g, const CellRef& ref, int shift) {
  if (shift == 0) return ref.index;
  const int blocks = g.resolution >> shift;
  int64_t index = ref.cascade;
  for (int a = 0; a < 3; ++a) index = index * blocks + (ref.cell[a] >> shift);
  return index;
}

// Where the ray leaves a cell, or with shift > 0 the cell's block (the smallest exit distance
// over the axes it moves along). inv_d: 1 / d per axis (unused where d is 0).
NERFX_HD inline float cell_exit(const GridGeometry& g, const CellRef& ref, const float* o,
                                const float* d, const float* inv_d, int shift = 0) {
  const float scale = float(1 << ref.cascade);
  float t = INFINITY;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0f) continue;
    const int first = ref.cell[a] >> shift << shift;  // the block's first cell along a
    const int face = d[a] > 0.0f ? first + (1 << shift) : first;
    const float u = (float(face) / float(g.resolution) * 2.0f - 1.0f) * scale;
    t = min_of(t, (mul_add(u, g.half_size[a], g.center[a]) - o[a]) * inv_d[a]);
  }
  return t;
}

// One ray's march: call next() until it returns false.
//
// blocks (optional, cone_angle = 0 only): one bit a block of 2^block_shift cells a side (see
// block_index), set where any of its cells is occupied; R must be a multiple of
// 4 * 2^block_shift, so that a block lies wholly inside or outside a finer cascade's box. From
// an empty cell of an empty block the march jumps past the whole block: the candidates it skips
// all lie in empty cells, so the samples are those of the cell-by-cell march, bit for bit.
struct RayMarcher {
  const GridGeometry* grid;
  const uint8_t* bitfield;
  const uint8_t* blocks;
  int block_shift;
  float o[3], d[3], inv_d[3];
  float t0, t_far, jitter, step, inv_step, cone_angle;
  int64_t k;  // lattice index of the next candidate (cone_angle = 0)
  float t;    // start of the next candidate (cone_angle > 0)
  bool alive;

  NERFX_HD RayMarcher(const GridGeometry& g, const uint8_t* bits, const float* origin,
                      const float* dir, float near, float far, float jitter_, float step_,
                      float cone_angle_, const uint8_t* blocks_ = nullptr, int block_shift_ = 0)
      : grid(&g), bitfield(bits), blocks(cone_angle_ > 0.0f ? nullptr : blocks_),
        block_shift(block_shift_), jitter(jitter_), step(step_), inv_step(1.0f / step_),
        cone_angle(cone_angle_), k(0) {
    float lo[3], hi[3], t_enter, t_exit;
    grid_box(g, lo, hi);
    for (int a = 0; a < 3; ++a) {
      o[a] = origin[a];
      d[a] = dir[a];
      inv_d[a] = d[a] != 0.0f ? 1.0f / d[a] : 0.0f;
    }
    const bool zero_dir = d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f;
    alive = !zero_dir && clip_to_box(o, d, lo, hi, t_enter, t_exit);
    t0 = alive ? max_of(near, t_enter) : 0.0f;
    t_far = alive ? min_of(far, t_exit) : 0.0f;
    alive = alive && t0 < t_far;
    t = mul_add(jitter, step, t0);
  }

  // The next sample [t_start, t_end] in an occupied cell and its midpoint's position [3] (the
  // point whose cell was tested); false once the ray has left the grid.
  NERFX_HD bool next(float& t_start, float& t_end, float* position) {
    while (alive) {
      float dt = step;
      if (cone_angle > 0.0f) {
        const float cell = 2.0f * grid->half_size[0] * float(1 << (grid->cascades - 1)) /
                           float(grid->resolution);
        dt = min_of(max_of(t * cone_angle, step), max_of(cell, step));
        t_start = t;
      } else {
        t_start = mul_add(float(k) + jitter, step, t0);
      }
      t_end = t_start + dt;
      const float mid = mul_add(0.5f, dt, t_start);
      if (!(mid < t_far)) break;
      for (int a = 0; a < 3; ++a) position[a] = mul_add(mid, d[a], o[a]);
      const CellRef ref = locate(*grid, position);
      if (occupied(bitfield, ref.index)) {
        k += 1;
        t = t_end;
        return true;
      }
      // Empty: jump to the first candidate whose midpoint lies past this cell, or past its
      // block where that is empty too.
      const int shift =
          blocks != nullptr && !occupied(blocks, block_index(*grid, ref, block_shift))
              ? block_shift
              : 0;
      const float exit = cell_exit(*grid, ref, o, d, inv_d, shift);
      if (cone_angle > 0.0f) {
        t = max_of(t_end, exit - 0.5f * dt);
      } else {
        k = lattice_skip(block_index(*grid, ref, shift), min_of(exit, t_far), shift);
      }
    }
    alive = false;
    return false;
  }

  // Midpoint of lattice candidate j (cone_angle = 0), rounded as next() rounds it.
  NERFX_HD float lattice_mid(int64_t j) const {
    return mul_add(0.5f, step, mul_add(float(j) + jitter, step, t0));
  }

  // Whether lattice candidate j is a sample to test (midpoint before t_far) whose midpoint lies
  // in the cell (shift 0) or block with flat index `index`.
  NERFX_HD bool lattice_in_cell(int64_t j, int64_t index, int shift) const {
    const float mid = lattice_mid(j);
    if (!(mid < t_far)) return false;
    float p[3];
    for (int a = 0; a < 3; ++a) p[a] = mul_add(mid, d[a], o[a]);
    return block_index(*grid, locate(*grid, p), shift) == index;
  }

  // The candidate to test after candidate k, found in the empty cell `index` that the ray leaves
  // at `exit` (<= t_far): the first one whose midpoint may lie past the cell. The estimate from
  // the exit distance is rounded (by ~|t| * 2^-24 / step steps: more than any fixed margin for
  // far rays), so it is confirmed exactly: the candidate before it must still be in this cell,
  // or the estimate steps back. Midpoints and their points are monotone in the candidate index,
  // so candidates between two of the same cell are in that cell too (for resolution % 4 == 0 a
  // coarse cell lies wholly inside or outside the finer cascade): nothing skipped is occupied,
  // exactly as in the dense march. Rounding moves the estimate by a few steps at most, so the
  // check runs once or twice per empty cell.
  // (The same for an empty block with flat index `index`, shift > 0: blocks are boxes too.)
  NERFX_HD int64_t lattice_skip(int64_t index, float exit, int shift) const {
    const float estimate = ceilf((exit - t0) * inv_step - jitter - 0.5f);
    int64_t next = estimate > float(k + 1) ? int64_t(estimate) : k + 1;
    while (next > k + 1 && !lattice_in_cell(next - 1, index, shift)) --next;
    return next;
  }

  // Where a resumed march would start: the next candidate, or +inf once the ray is done.
  NERFX_HD float resume_at() const {
    if (!alive) return INFINITY;
    return cone_angle > 0.0f ? t : mul_add(float(k) + jitter, step, t0);
  }
};

// The count pass: a ray's samples, at most max_samples; the marcher is left where a resumed
// march would start.
NERFX_HD inline int64_t count_samples(RayMarcher& m, int64_t max_samples) {
  float t_start, t_end, position[3];
  int64_t n = 0;
  while (n < max_samples && m.next(t_start, t_end, position)) ++n;
  return n;
}

}  // namespace nerfx::raymarch
