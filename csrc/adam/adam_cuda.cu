// Adam step skipping zero-gradient entries, on CUDA: one thread per entry over the shared math.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "adam/adam.h"

namespace nerfx::adam {
namespace {

constexpr int kThreads = 256;

// param, grad, exp_avg, exp_avg_sq, step: [n] each; grad_scale, found_inf: [1] or nullptr (read
// here, on the device: a mixed-precision step needs no host synchronisation)
template <typename param_t, typename state_t>
__global__ void step_kernel(int64_t n, param_t* __restrict__ param,
                            const param_t* __restrict__ grad, state_t* __restrict__ exp_avg,
                            state_t* __restrict__ exp_avg_sq, int32_t* __restrict__ step,
                            Settings<state_t> s, const float* __restrict__ grad_scale,
                            const float* __restrict__ found_inf) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (found_inf != nullptr && *found_inf != 0.0f) return;  // an overflowed step changes nothing
  const state_t inv_scale = grad_scale != nullptr ? state_t(inverse_scale(*grad_scale))
                                                  : state_t(1);
  update_entry(i, param, grad, exp_avg, exp_avg_sq, step, s, inv_scale);
}

const float* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

}  // namespace

void step_cuda(const State& state, double lr, double beta1, double beta2, double eps) {
  const c10::cuda::CUDAGuard device_guard(state.param.device());
  const int64_t n = state.param.numel();
  const unsigned blocks = unsigned((n + kThreads - 1) / kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(state.param.scalar_type(), "adam_step_cuda", [&] {
    using state_t = at::opmath_type<scalar_t>;  // float for float and half, double for double
    step_kernel<scalar_t, state_t><<<blocks, kThreads, 0, stream>>>(
        n, state.param.data_ptr<scalar_t>(), state.grad.data_ptr<scalar_t>(),
        state.exp_avg.data_ptr<state_t>(), state.exp_avg_sq.data_ptr<state_t>(),
        state.step.data_ptr<int32_t>(), make_settings<state_t>(lr, beta1, beta2, eps),
        optional_ptr(state.grad_scale), optional_ptr(state.found_inf));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace nerfx::adam
