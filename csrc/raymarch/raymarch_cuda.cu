// Ray marching on CUDA: one thread per ray, looping over the shared math; count, scan, fill.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "raymarch/raymarch.h"

namespace nerfx::raymarch {
namespace {

constexpr int kThreads = 128;

struct RayPtrs {
  const float *origins, *directions, *near, *far, *jitter;
};

RayPtrs ptrs_of(const Rays& rays) {
  return {rays.origins.data_ptr<float>(), rays.directions.data_ptr<float>(),
          rays.near.data_ptr<float>(), rays.far.data_ptr<float>(), rays.jitter.data_ptr<float>()};
}

__device__ RayMarcher marcher_of(const RayPtrs& rays, const MarchParams& p, int64_t r) {
  return RayMarcher(p.grid, p.bitfield, rays.origins + r * 3, rays.directions + r * 3,
                    rays.near[r], rays.far[r], rays.jitter[r], p.step_size, p.cone_angle);
}

__global__ void count_kernel(int64_t n_rays, RayPtrs rays, MarchParams p, int64_t* counts,
                             float* resume) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  RayMarcher m = marcher_of(rays, p, r);
  counts[r] = count_samples(m, p.max_samples);
  resume[r] = m.resume_at();
}

__global__ void fill_kernel(int64_t n_rays, RayPtrs rays, MarchParams p,
                            const int64_t* __restrict__ offsets, float* t_start, float* t_end,
                            float* positions) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  RayMarcher m = marcher_of(rays, p, r);
  // next() writes every candidate it tests, kept or not: into registers, and only kept samples
  // go to global memory (through the global arrays the bitfield's byte loads could alias them,
  // forcing a store per candidate).
  float start, end, position[3];
  int64_t i = offsets[r];
  for (; i < offsets[r + 1] && m.next(start, end, position); ++i) {
    t_start[i] = start;
    t_end[i] = end;
    for (int a = 0; a < 3; ++a) positions[i * 3 + a] = position[a];
  }
  // The count pass ran the same march: a shortfall would leave samples unwritten.
  CUDA_KERNEL_ASSERT(i == offsets[r + 1]);
}

}  // namespace

Marched march_cuda(const Rays& rays, const MarchParams& p, at::Tensor& counts,
                   at::Tensor& resume) {
  const c10::cuda::CUDAGuard device_guard(rays.origins.device());
  const int64_t n = rays.origins.size(0);
  const unsigned blocks = unsigned((n + kThreads - 1) / kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  count_kernel<<<blocks, kThreads, 0, stream>>>(n, ptrs_of(rays), p, counts.data_ptr<int64_t>(),
                                                resume.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Marched out = allocate_samples(counts, resume);
  if (out.t_start.numel() > 0) {
    fill_kernel<<<blocks, kThreads, 0, stream>>>(
        n, ptrs_of(rays), p, out.offsets.data_ptr<int64_t>(), out.t_start.data_ptr<float>(),
        out.t_end.data_ptr<float>(), out.positions.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace nerfx::raymarch
