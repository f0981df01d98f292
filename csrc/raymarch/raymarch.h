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

// counts [N] int64 (at most max_samples), resume [N] float32 (next candidate, +inf when done)
void count_cpu(const Rays& rays, const MarchParams& p, at::Tensor& counts, at::Tensor& resume);
// offsets [N + 1] int64 -> t_start [S], t_end [S], positions [S, 3] (sample midpoints)
void fill_cpu(const Rays& rays, const MarchParams& p, const at::Tensor& offsets,
              at::Tensor& t_start, at::Tensor& t_end, at::Tensor& positions);
#ifdef NERFX_WITH_CUDA
void count_cuda(const Rays& rays, const MarchParams& p, at::Tensor& counts, at::Tensor& resume);
void fill_cuda(const Rays& rays, const MarchParams& p, const at::Tensor& offsets,
               at::Tensor& t_start, at::Tensor& t_end, at::Tensor& positions);
#endif

// Marches every ray twice (count, then fill at the scanned offsets), so nothing is written
// past the buffer. -> (offsets [N + 1], t_start [S], t_end [S], positions [S, 3], resume [N])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near,
    const at::Tensor& far, const at::Tensor& jitter, const at::Tensor& bitfield,
    c10::ArrayRef<double> center, c10::ArrayRef<double> half_size, int64_t resolution,
    int64_t cascades, double step_size, double cone_angle, int64_t max_samples);

}  // namespace nerfx::raymarch
