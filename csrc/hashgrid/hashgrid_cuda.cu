// Hash-grid encoding on CUDA: one thread per (point, level), looping over the shared math.
// The backward is not deterministic (atomics): it tells torch.use_deterministic_algorithms.
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>

#include "hashgrid/hashgrid.h"

namespace nerfx::hashgrid {
namespace {

constexpr int kThreads = 256;

// row[f] += values[f] for the F features of a gradient row other threads add to as well. On
// sm_90 (Hopper) float rows take two or four features per atomic (atomicAdd on float2 / float4:
// each element atomic, half or a quarter of the instructions: RED.E.ADD.F32x2 / F32x4 in SASS).
// Rows are aligned for it: the table is, and a row starts at a multiple of F floats.
template <int F>
struct AtomicRowAdd {
  template <typename scalar_t>
  __device__ void operator()(scalar_t* row, const scalar_t* values) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kFloat = std::is_same_v<scalar_t, float>;
    constexpr bool kQuads = kFloat && F % 4 == 0, kPairs = kFloat && F % 2 == 0;
#else
    constexpr bool kQuads = false, kPairs = false;
#endif
    if constexpr (kQuads) {
      for (int f = 0; f < F; f += 4) {
        atomicAdd(reinterpret_cast<float4*>(row + f),
                  make_float4(values[f], values[f + 1], values[f + 2], values[f + 3]));
      }
    } else if constexpr (kPairs) {
      for (int f = 0; f < F; f += 2) {
        atomicAdd(reinterpret_cast<float2*>(row + f), make_float2(values[f], values[f + 1]));
      }
    } else {
      for (int f = 0; f < F; ++f) atomicAdd(row + f, values[f]);
    }
  }
};

// x: [N, D], params: [n_rows * F], out: [N, L * F]
template <int D, int F, typename scalar_t, typename param_t>
__global__ void forward_kernel(int64_t n_points, const scalar_t* __restrict__ x,
                               const param_t* __restrict__ params, Levels levels,
                               scalar_t* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = blockIdx.y;
  if (i >= n_points) return;
  encode_level<D, F>(x + i * D, params, levels, level, out + (i * levels.n_levels + level) * F);
}

// Both gradients, each where its pointer is not null, from one location of each (point, level)
// cell: atomics scatter into the float/double accumulation table and add into grad_x (zeroed).
template <int D, int F, typename scalar_t, typename param_t>
__global__ void backward_kernel(int64_t n_points, const scalar_t* __restrict__ x,
                                const param_t* __restrict__ params,
                                const scalar_t* __restrict__ grad_out, Levels levels,
                                scalar_t* __restrict__ grad_params, scalar_t* __restrict__ grad_x) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = blockIdx.y;
  if (i >= n_points) return;
  scalar_t g[F];
  for (int f = 0; f < F; ++f) g[f] = grad_out[(i * levels.n_levels + level) * F + f];
  scalar_t gx[D];
  for (int d = 0; d < D; ++d) gx[d] = scalar_t(0);
  backward_level<D, F>(x + i * D, params, levels, level, g, grad_params, AtomicRowAdd<F>{},
                       grad_x != nullptr ? gx : nullptr);
  if (grad_x != nullptr) {
    for (int d = 0; d < D; ++d) atomicAdd(grad_x + i * D + d, gx[d]);
  }
}

// What a launch of one thread per (point, level) needs: x's device made current (while it
// lives), the number of points, the grid (blocks of kThreads over the points, one row of blocks
// per level) and the current stream.
struct PointLevelLaunch {
  PointLevelLaunch(const at::Tensor& x, const Levels& levels)
      : device_guard(x.device()),
        n(x.size(0)),
        grid(unsigned((n + kThreads - 1) / kThreads), unsigned(levels.n_levels)),
        stream(at::cuda::getCurrentCUDAStream()) {}

  const c10::cuda::CUDAGuard device_guard;
  const int64_t n;
  const dim3 grid;
  const at::cuda::CUDAStream stream;
};

}  // namespace

void forward_cuda(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                  at::Tensor& out) {
  const PointLevelLaunch launch(x, levels);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&]<typename scalar_t, typename param_t, int D, int NF>(
               Kernel<scalar_t, param_t, D, NF>) {
             forward_kernel<D, NF><<<launch.grid, kThreads, 0, launch.stream>>>(
                 launch.n, x.data_ptr<scalar_t>(), params.data_ptr<param_t>(), levels,
                 out.data_ptr<scalar_t>());
             C10_CUDA_KERNEL_LAUNCH_CHECK();
           });
}

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                   const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x) {
  if (!grad_params.defined() && !grad_x.defined()) return;
  // The atomics' order varies from run to run.
  at::globalContext().alertNotDeterministic("nerfx::hash_encode_backward");
  const PointLevelLaunch launch(x, levels);
  if (grad_params.defined()) grad_params.zero_();  // the kernel adds into it
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&]<typename scalar_t, typename param_t, int D, int NF>(
               Kernel<scalar_t, param_t, D, NF>) {
             backward_kernel<D, NF><<<launch.grid, kThreads, 0, launch.stream>>>(
                 launch.n, x.data_ptr<scalar_t>(), params.data_ptr<param_t>(),
                 grad_out.data_ptr<scalar_t>(), levels,
                 grad_params.defined() ? grad_params.data_ptr<scalar_t>() : nullptr,
                 grad_x.defined() ? grad_x.data_ptr<scalar_t>() : nullptr);
             C10_CUDA_KERNEL_LAUNCH_CHECK();
           });
}

}  // namespace nerfx::hashgrid
