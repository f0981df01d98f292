// Occupancy-grid ray marching: the launchers of each device and the entry point they plug
// into.
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

// The launchers: loops over the header math, one per device (raymarch_cpu.cpp,
// raymarch_cuda.cu), called by the entry point below with checked rays, N > 0, and the per-ray
// outputs allocated: counts [N] int64 and resume [N] float, uninitialised, every entry written.
// Once a launcher has counted the samples, allocate_samples gives it the rest to fill.
//   CPU: one pass; each chunk of rays marches into its own buffer, then the buffers are copied
//        to their scanned offsets.
//   CUDA: count, scan, then fill: the same march twice, so nothing is written past the buffer.
using Launcher = Marched (*)(const Rays& rays, const MarchParams& p, at::Tensor& counts,
                             at::Tensor& resume);

Marched march_cpu(const Rays& rays, const MarchParams& p, at::Tensor& counts, at::Tensor& resume);
#ifdef NERFX_WITH_CUDA
Marched march_cuda(const Rays& rays, const MarchParams& p, at::Tensor& counts,
                   at::Tensor& resume);
#endif

// The samples' allocation (raymarch.cpp), on the rays' device: offsets [N + 1], the exclusive
// scan of counts [N], and t_start, t_end [S], positions [S, 3] (uninitialised) for S their total.
Marched allocate_samples(const at::Tensor& counts, const at::Tensor& resume);

// The entry point (raymarch.cpp): checks and the per-ray allocation, then `launch`. ext.cpp
// registers it with the CPU launcher under the CPU key and with the CUDA launcher under the CUDA
// key. nerfx::march_rays -> (offsets [N + 1], t_start [S], t_end [S], positions [S, 3],
// resume [N])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    Launcher launch, const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& near,
    const at::Tensor& far, const at::Tensor& jitter, const at::Tensor& bitfield,
    c10::ArrayRef<double> center, c10::ArrayRef<double> half_size, int64_t resolution,
    int64_t cascades, double step_size, double cone_angle, int64_t max_samples);

}  // namespace nerfx::raymarch
