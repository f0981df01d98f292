// Ray marching on CUDA: one thread per ray, looping over the shared math.
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
  for (int64_t i = offsets[r];
       i < offsets[r + 1] && m.next(t_start[i], t_end[i], positions + i * 3); ++i) {
  }
}

}  // namespace

void count_cuda(const Rays& rays, const MarchParams& p, at::Tensor& counts, at::Tensor& resume) {
  const c10::cuda::CUDAGuard device_guard(rays.origins.device());
  const int64_t n = counts.numel();
  count_kernel<<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0,
                 at::cuda::getCurrentCUDAStream()>>>(n, ptrs_of(rays), p,
                                                     counts.data_ptr<int64_t>(),
                                                     resume.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fill_cuda(const Rays& rays, const MarchParams& p, const at::Tensor& offsets,
               at::Tensor& t_start, at::Tensor& t_end, at::Tensor& positions) {
  const c10::cuda::CUDAGuard device_guard(rays.origins.device());
  const int64_t n = offsets.numel() - 1;
  fill_kernel<<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0,
                at::cuda::getCurrentCUDAStream()>>>(
      n, ptrs_of(rays), p, offsets.data_ptr<int64_t>(), t_start.data_ptr<float>(),
      t_end.data_ptr<float>(), positions.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace nerfx::raymarch
