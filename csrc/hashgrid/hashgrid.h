// Hash-grid encoding: the launchers of each device, the entry points they plug into, and the
// compile-time dispatch both launchers share.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include "nerfx/hashgrid.h"

namespace nerfx::hashgrid {

// Builds the per-level geometry from the layout the Python side computed (checked).
Levels make_levels(c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t n_dims);

// The launchers: loops over the header math, one per device (hashgrid_cpu.cpp,
// hashgrid_cuda.cu), called by the entry points below with checked, allocated tensors.
//
// x:       [N, D]       compute type (float or double), contiguous, N > 0
// params:  [n_rows * F] float, double or half, contiguous
// out:     [N, L * F]   compute type, uninitialised: every entry is written
using ForwardLauncher = void (*)(const at::Tensor& x, const at::Tensor& params,
                                 const Levels& levels, int64_t F, at::Tensor& out);
// One pass computing the gradients whose tensors are defined:
// grad_out:    [N, L * F] compute type, contiguous
// grad_params: [n_rows * F] accumulation type (float for float/half params, double for double),
//              uninitialised: the launcher zeroes it before adding; or undefined
// grad_x:      [N, D] compute type, zeroed; or undefined when x needs no gradient
// The CPU launcher is deterministic; the CUDA one is not (atomics) and says so to torch.
using BackwardLauncher = void (*)(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& params, const Levels& levels, int64_t F,
                                  at::Tensor& grad_params, at::Tensor& grad_x);

// The CPU launchers' AVX2 loops (hashgrid_cpu_avx2.cpp) for float32 x and parameters, D = 3,
// F = 2: the points [begin, end) at one level, 8 at a time, bit for bit the results of the
// portable loops over the header's math. Called only where cpu::use_avx2() allows.
// xs: [N, 3]; table: the level's rows [n_rows, 2]; point i's 2 outputs written at
// outs + i * out_stride.
void forward_level_avx2(const float* xs, const float* table, const Levels& levels, int level,
                        int64_t begin, int64_t end, float* outs, int64_t out_stride);
// gout: this level's grad_out, point i's 2 values at gout + i * gout_stride; gtable: the
// level's gradient rows [n_rows, 2]: weight * grad_out added, in point order then corner order,
// to the rows in [row_begin, row_end) (the task's own) alone.
void backward_params_level_avx2(const float* xs, const float* gout, int64_t gout_stride,
                                const Levels& levels, int level, int64_t begin, int64_t end,
                                float* gtable, uint32_t row_begin, uint32_t row_end);

// Points [begin, end) of a [N, L * 2] float tensor moved to or from its level-major copy
// ([L, N, 2]): 8-byte pairs, 4 points by 4 levels at a time.
void level_major_to_points_avx2(const float* by_level, int L, int64_t n_points, int64_t begin,
                                int64_t end, float* outs);
void points_to_level_major_avx2(const float* outs, int L, int64_t n_points, int64_t begin,
                                int64_t end, float* by_level);

void forward_cpu(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                 at::Tensor& out);
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                  const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x);
#ifdef NERFX_WITH_CUDA
void forward_cuda(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                  at::Tensor& out);
void backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                   const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x);
#endif

// The entry points (hashgrid.cpp): checks and allocation, then `launch`. ext.cpp registers each
// with the CPU launcher under the CPU key and with the CUDA launcher under the CUDA key.
// nerfx::hash_encode: x [N, D], params [n_rows * F] -> [N, L * F]
at::Tensor forward(ForwardLauncher launch, const at::Tensor& x, const at::Tensor& params,
                   c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t F);
// nerfx::hash_encode_backward: grad_out [N, L * F] -> (grad_params [n_rows * F], or [0] when
// needs_params_grad is false; grad_x [N, D], or [0] when needs_x_grad is false).
std::tuple<at::Tensor, at::Tensor> backward(BackwardLauncher launch, const at::Tensor& grad_out,
                                            const at::Tensor& x, const at::Tensor& params,
                                            c10::IntArrayRef offsets, c10::IntArrayRef resolutions,
                                            int64_t F, bool needs_x_grad, bool needs_params_grad);

template <typename T>
struct Type {
  using type = T;
};

// One instantiation of the kernels: compute type scalar_t, stored parameter type param_t, D input
// dimensions, F features per level. dispatch hands one to its function, which names them by
// deduction: [&]<typename scalar_t, typename param_t, int D, int NF>(
// Kernel<scalar_t, param_t, D, NF>) { ... }.
template <typename Scalar, typename Param, int Dims, int Features>
struct Kernel {
  using scalar_t = Scalar;
  using param_t = Param;
  static constexpr int D = Dims, F = Features;
};

// Calls fn(Kernel<scalar_t, param_t, D, F>) for the supported combinations: (float, float),
// (float, half), (double, double); D in {2, 3}; F in {1, 2, 4, 8}.
template <typename Fn>
void dispatch(at::ScalarType compute, at::ScalarType stored, int64_t D, int64_t F, Fn&& fn) {
  auto with_dims = [&]<typename scalar_t, typename param_t>(Type<scalar_t>, Type<param_t>) {
    auto with_features = [&]<int Dims>(std::integral_constant<int, Dims>) {
      switch (F) {
        case 1: return fn(Kernel<scalar_t, param_t, Dims, 1>{});
        case 2: return fn(Kernel<scalar_t, param_t, Dims, 2>{});
        case 4: return fn(Kernel<scalar_t, param_t, Dims, 4>{});
        case 8: return fn(Kernel<scalar_t, param_t, Dims, 8>{});
        default: TORCH_CHECK(false, "hash_encode: n_features_per_level must be 1, 2, 4 or 8, got ", F);
      }
    };
    if (D == 2) return with_features(std::integral_constant<int, 2>{});
    TORCH_CHECK(D == 3, "hash_encode: x must have 2 or 3 input dimensions, got ", D);
    return with_features(std::integral_constant<int, 3>{});
  };
  if (compute == at::kFloat && stored == at::kFloat) return with_dims(Type<float>{}, Type<float>{});
  if (compute == at::kFloat && stored == at::kHalf) return with_dims(Type<float>{}, Type<c10::Half>{});
  if (compute == at::kDouble && stored == at::kDouble) return with_dims(Type<double>{}, Type<double>{});
  TORCH_CHECK(false, "hash_encode: unsupported dtypes x=", compute, " params=", stored,
              " (supported: float32 x with float32 or float16 params, float64 with float64)");
}

}  // namespace nerfx::hashgrid
