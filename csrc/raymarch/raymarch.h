// Occupancy-grid ray marching: launcher declarations and the registered ops.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "nerfx/raymarch.h"

namespace nerfx::raymarch {

// The rays and their per-ray parameters, all float32 and contiguous:
//   origins [N, 3], directions [N, 3], near [N], far [N], jitter [N] (in [0, 1), 0 = none)
struct Rays {
  at::Tensor origins, directions, near, far, jitter;
};
struct MarchParams {
  GridGeometry grid;
  const uint8_t* bitfield;  // [cascades * R^3 / 8]
  float step_size, cone_angle;
  int64_t max_samples;
};

// offsets [N + 1] int64 (CSR, at most max_samples per ray), t_start [S], t_end [S],
// positions [S, 3] (the tested midpoints), resume [N] (next candidate, +inf when done)
struct Marched {
  at::Tensor offsets, t_start, t_end, positions, resume;
};

// CPU: one pass; each chunk of rays marches into its own buffer, then the buffers are copied
// to their scanned offsets.
Marched march_cpu(const Rays& rays, const MarchParams& p);
#ifdef NERFX_WITH_CUDA
// CUDA: count, scan, then fill: the same march twice, so nothing is written past the buffer.
Marched march_cuda(const Rays& rays, const MarchParams& p);
#endif

// The registered op. -> (offsets [N + 1], t_start [S], t_end [S], positions [S, 3], resume [N])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near,
    const at::Tensor& far, const at::Tensor& jitter, const at::Tensor& bitfield,
    c10::ArrayRef<double> center, c10::ArrayRef<double> half_size, int64_t resolution,
    int64_t cascades, double step_size, double cone_angle, int64_t max_samples);

}  // namespace nerfx::raymarch
