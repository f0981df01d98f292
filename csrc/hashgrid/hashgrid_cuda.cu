// Hash-grid encoding on CUDA: one thread per (point, level), looping over the shared math.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "hashgrid/hashgrid.h"

namespace nerfx::hashgrid {
namespace {

constexpr int kThreads = 256;

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

// Scatters weight * grad_out into the float/double accumulation table with atomics.
template <int D, int F, typename scalar_t>
__global__ void params_grad_kernel(int64_t n_points, const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ grad_out, Levels levels,
                                   scalar_t* __restrict__ grad_params) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = blockIdx.y;
  if (i >= n_points) return;
  Cell<D, scalar_t> cell;
  locate_cell<D>(x + i * D, levels, level, cell);
  scalar_t g[F];
  for (int f = 0; f < F; ++f) g[f] = grad_out[(i * levels.n_levels + level) * F + f];
  scatter_cell<D, F>(cell, g, grad_params + levels.offsets[level] * F,
                     [](scalar_t* to, scalar_t value) { atomicAdd(to, value); });
}

// One thread per point sums the input gradient over all levels.
template <int D, int F, typename scalar_t, typename param_t>
__global__ void input_grad_kernel(int64_t n_points, const scalar_t* __restrict__ x,
                                  const param_t* __restrict__ params,
                                  const scalar_t* __restrict__ grad_out, Levels levels,
                                  scalar_t* __restrict__ grad_x) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_points) return;
  scalar_t acc[D];
  for (int d = 0; d < D; ++d) acc[d] = scalar_t(0);
  for (int l = 0; l < levels.n_levels; ++l) {
    input_grad_level<D, F>(x + i * D, params, levels, l, grad_out + (i * levels.n_levels + l) * F,
                           acc);
  }
  for (int d = 0; d < D; ++d) grad_x[i * D + d] = acc[d];
}

}  // namespace

void forward_cuda(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                  at::Tensor& out) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0);
  const dim3 grid(unsigned((n + kThreads - 1) / kThreads), unsigned(levels.n_levels));
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&](auto scalar, auto param, auto dims, auto features) {
             using scalar_t = typename decltype(scalar)::type;
             using param_t = typename decltype(param)::type;
             forward_kernel<decltype(dims)::value, decltype(features)::value>
                 <<<grid, kThreads, 0, stream>>>(n, x.data_ptr<scalar_t>(),
                                                 params.data_ptr<param_t>(), levels,
                                                 out.data_ptr<scalar_t>());
             C10_CUDA_KERNEL_LAUNCH_CHECK();
           });
}

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                   const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0);
  const unsigned blocks = unsigned((n + kThreads - 1) / kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&](auto scalar, auto param, auto dims, auto features) {
             using scalar_t = typename decltype(scalar)::type;
             using param_t = typename decltype(param)::type;
             constexpr int D = decltype(dims)::value, NF = decltype(features)::value;
             if (grad_params.defined()) {
               params_grad_kernel<D, NF><<<dim3(blocks, levels.n_levels), kThreads, 0, stream>>>(
                   n, x.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), levels,
                   grad_params.data_ptr<scalar_t>());
               C10_CUDA_KERNEL_LAUNCH_CHECK();
             }
             if (grad_x.defined()) {
               input_grad_kernel<D, NF><<<blocks, kThreads, 0, stream>>>(
                   n, x.data_ptr<scalar_t>(), params.data_ptr<param_t>(),
                   grad_out.data_ptr<scalar_t>(), levels, grad_x.data_ptr<scalar_t>());
               C10_CUDA_KERNEL_LAUNCH_CHECK();
             }
           });
}

}  // namespace nerfx::hashgrid
