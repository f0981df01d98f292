// Volume compositing on CUDA: one thread per ray, looping over the shared math; densities and
// colours float or half beside float positions (dispatch_types).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>

#include "composite/composite.h"

namespace nerfx::composite {
namespace {

constexpr int kThreads = 256;

// Each thread checks its ray's CSR range before touching a sample: a bad one (offsets not rising
// from 0 to S) fires a device-side assert, reported at the next synchronisation, and the ray is
// left alone, so nothing outside [0, S) is read or written even where asserts are compiled out.
__device__ inline bool checked_ray_range(int64_t r, int64_t n_rays, const int64_t* offsets,
                                         int64_t n_samples) {
  const bool valid = valid_ray_range(r, n_rays, offsets, n_samples);
  CUDA_KERNEL_ASSERT_MSG(valid, "composite_rays: offsets must rise from 0 to n_samples");
  return valid;
}

template <typename scalar_t, typename sigma_t, typename color_t>
__global__ void forward_kernel(int64_t n_rays, int64_t n_samples,
                               const int64_t* __restrict__ offsets,
                               const sigma_t* __restrict__ sigmas,
                               const color_t* __restrict__ rgbs,
                               const scalar_t* __restrict__ t_start,
                               const scalar_t* __restrict__ t_end, scalar_t threshold,
                               scalar_t* color, scalar_t* opacity, scalar_t* depth,
                               scalar_t* weights) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  if (!checked_ray_range(r, n_rays, offsets, n_samples)) return;
  const SurvivalOf<scalar_t, sigma_t> survive{sigmas, t_start, t_end};
  const RayTotals<scalar_t> ray = composite_ray(offsets[r], offsets[r + 1], survive, rgbs, t_start,
                                                t_end, threshold, weights);
  store_totals(r, ray, color, opacity, depth);
}

template <typename scalar_t, typename sigma_t, typename color_t>
__global__ void backward_kernel(int64_t n_rays, int64_t n_samples,
                                const int64_t* __restrict__ offsets,
                                const sigma_t* __restrict__ sigmas,
                                const color_t* __restrict__ rgbs,
                                const scalar_t* __restrict__ t_start,
                                const scalar_t* __restrict__ t_end, scalar_t threshold,
                                const scalar_t* color, const scalar_t* opacity,
                                const scalar_t* depth, const scalar_t* weights,
                                const scalar_t* g_color, const scalar_t* g_opacity,
                                const scalar_t* g_depth, const scalar_t* g_weights,
                                sigma_t* grad_sigmas, color_t* grad_rgbs) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  if (!checked_ray_range(r, n_rays, offsets, n_samples)) return;
  const SurvivalOf<scalar_t, sigma_t> survive{sigmas, t_start, t_end};
  composite_ray_backward(offsets[r], offsets[r + 1], survive, rgbs, t_start, t_end, threshold,
                         weights, load_totals(r, color, opacity, depth),
                         load_totals(r, g_color, g_opacity, g_depth), g_weights, grad_sigmas,
                         grad_rgbs);
}

// What a launch of one thread per ray needs: the inputs' device made current (while it lives),
// the number of rays, the blocks of kThreads covering them, and the current stream.
struct RayLaunch {
  explicit RayLaunch(const Packed& in)
      : device_guard(in.sigmas.device()),
        n_rays(in.offsets.numel() - 1),
        blocks(unsigned((n_rays + kThreads - 1) / kThreads)),
        stream(at::cuda::getCurrentCUDAStream()) {}

  const c10::cuda::CUDAGuard device_guard;
  const int64_t n_rays;
  const unsigned blocks;
  const at::cuda::CUDAStream stream;
};

}  // namespace

void forward_cuda(const Packed& in, double threshold, Outputs& out) {
  const RayLaunch launch(in);
  dispatch_types(in, [&]<typename scalar_t, typename sigma_t, typename color_t>(
                         Types<scalar_t, sigma_t, color_t>) {
    forward_kernel<scalar_t, sigma_t, color_t><<<launch.blocks, kThreads, 0, launch.stream>>>(
        launch.n_rays, in.sigmas.numel(), in.offsets.data_ptr<int64_t>(),
        in.sigmas.data_ptr<sigma_t>(), in.rgbs.data_ptr<color_t>(),
        in.t_start.data_ptr<scalar_t>(),
        in.t_end.data_ptr<scalar_t>(), scalar_t(threshold), out.color.data_ptr<scalar_t>(),
        out.opacity.data_ptr<scalar_t>(), out.depth.data_ptr<scalar_t>(),
        out.weights.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const Packed& in, double threshold, const Outputs& saved, const Outputs& grads,
                   at::Tensor& grad_sigmas, at::Tensor& grad_rgbs) {
  const RayLaunch launch(in);
  dispatch_types(in, [&]<typename scalar_t, typename sigma_t, typename color_t>(
                         Types<scalar_t, sigma_t, color_t>) {
    backward_kernel<scalar_t, sigma_t, color_t><<<launch.blocks, kThreads, 0, launch.stream>>>(
        launch.n_rays, in.sigmas.numel(), in.offsets.data_ptr<int64_t>(),
        in.sigmas.data_ptr<sigma_t>(), in.rgbs.data_ptr<color_t>(),
        in.t_start.data_ptr<scalar_t>(),
        in.t_end.data_ptr<scalar_t>(), scalar_t(threshold), saved.color.data_ptr<scalar_t>(),
        saved.opacity.data_ptr<scalar_t>(), saved.depth.data_ptr<scalar_t>(),
        saved.weights.data_ptr<scalar_t>(), grads.color.data_ptr<scalar_t>(),
        grads.opacity.data_ptr<scalar_t>(), grads.depth.data_ptr<scalar_t>(),
        grads.weights.defined() ? grads.weights.data_ptr<scalar_t>() : nullptr,
        grad_sigmas.data_ptr<sigma_t>(), grad_rgbs.data_ptr<color_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace nerfx::composite
