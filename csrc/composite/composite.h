// Volume compositing of packed samples: the launchers of each device and the entry points they
// plug into.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "nerfx/composite.h"

namespace nerfx::composite {

// Packed samples of n_rays rays, ray r owning samples [offsets[r], offsets[r + 1]):
//   sigmas [S], rgbs [S, 3], t_start [S], t_end [S], offsets [n_rays + 1] int64
// Outputs: color [n_rays, 3], opacity [n_rays], depth [n_rays], weights [S].
// t_start and t_end are float or double, the type of the outputs and the arithmetic; with float,
// sigmas and rgbs may each be half (the entry points' checks enforce it). All contiguous.
struct Packed {
  at::Tensor sigmas, rgbs, t_start, t_end, offsets;
};
struct Outputs {
  at::Tensor color, opacity, depth, weights;
};

// The types of one instantiation of the kernels: positions, outputs and arithmetic (scalar_t),
// densities (sigma_t), colours (color_t). dispatch_types hands one to its function, which names
// them by deduction: [&]<typename scalar_t, typename sigma_t, typename color_t>(
// Types<scalar_t, sigma_t, color_t>) { ... }.
template <typename Scalar, typename Sigma, typename Color>
struct Types {
  using scalar_t = Scalar;
  using sigma_t = Sigma;
  using color_t = Color;
};

// Calls f(Types<scalar_t, sigma_t, color_t>) with the packed inputs' types: scalar_t from
// t_start; sigma_t and color_t scalar_t, or at::Half beside float.
template <typename F>
void dispatch_types(const Packed& in, F&& f) {
  if (in.t_start.scalar_type() == at::kDouble) {
    f(Types<double, double, double>{});
    return;
  }
  const bool half_sigmas = in.sigmas.scalar_type() == at::kHalf;
  const bool half_colors = in.rgbs.scalar_type() == at::kHalf;
  if (half_sigmas && half_colors) {
    f(Types<float, at::Half, at::Half>{});
  } else if (half_sigmas) {
    f(Types<float, at::Half, float>{});
  } else if (half_colors) {
    f(Types<float, float, at::Half>{});
  } else {
    f(Types<float, float, float>{});
  }
}

// The launchers: loops over the header math, one per device (composite_cpu.cpp,
// composite_cuda.cu), called by the entry points below with checked, allocated tensors and
// n_rays > 0. Each tests every ray's range before touching its samples (valid_ray_range): the
// CPU launchers all rays up front, raising; the CUDA kernels each its own ray, with a device-side
// assert. The launchers write every entry of their outputs (0 past the threshold).
// forward: out.color [n_rays, 3], out.opacity [n_rays], out.depth [n_rays], out.weights [S]
using ForwardLauncher = void (*)(const Packed& in, double threshold, Outputs& out);
// backward: saved (the forward's outputs) and grads (theirs; grads.weights may be undefined: no
// gradient) -> grad_sigmas [S], grad_rgbs [S, 3], in sigmas' and rgbs' types.
using BackwardLauncher = void (*)(const Packed& in, double threshold, const Outputs& saved,
                                  const Outputs& grads, at::Tensor& grad_sigmas,
                                  at::Tensor& grad_rgbs);

// The CPU launchers' AVX2 loops (composite_cpu_avx2.cpp), for float32 positions: raw pointers
// to the contiguous tensors above, rays [r_begin, r_end) per call; sigmas and rgbs in float32 or,
// where half_sigmas / half_rgbs, IEEE half (read with F16C, gradients rounded to nearest even).
struct VectorRays {
  const int64_t* offsets;             // [n_rays + 1], every range valid (checked before)
  const void *sigmas, *rgbs;          // [S], [S, 3]
  bool half_sigmas, half_rgbs;
  const float *t_start, *t_end;       // [S] each
  float threshold;
};
struct VectorForward {
  float *color, *opacity, *depth;     // [n_rays, 3], [n_rays], [n_rays] (written)
  float* weights;                     // [S] (written)
};
struct VectorBackward {
  const float *color, *opacity, *depth, *weights;  // the forward's outputs
  const float *grad_color, *grad_opacity, *grad_depth;
  const float* grad_weights;          // [S] or nullptr (no gradient)
  void *grad_sigmas, *grad_rgbs;      // [S], [S, 3] in the sigmas' and rgbs' types (written)
};
void forward_rays_avx2(const VectorRays& in, const VectorForward& out, int64_t r_begin,
                       int64_t r_end);
void backward_rays_avx2(const VectorRays& in, const VectorBackward& io, int64_t r_begin,
                        int64_t r_end);

void forward_cpu(const Packed& in, double threshold, Outputs& out);
void backward_cpu(const Packed& in, double threshold, const Outputs& saved,
                  const Outputs& grads, at::Tensor& grad_sigmas, at::Tensor& grad_rgbs);
#ifdef NERFX_WITH_CUDA
void forward_cuda(const Packed& in, double threshold, Outputs& out);
void backward_cuda(const Packed& in, double threshold, const Outputs& saved,
                   const Outputs& grads, at::Tensor& grad_sigmas, at::Tensor& grad_rgbs);
#endif

// The entry points (composite.cpp): checks and allocation, then `launch`. ext.cpp registers each
// with the CPU launcher under the CPU key and with the CUDA launcher under the CUDA key.
// nerfx::composite_rays -> (color [n_rays, 3], opacity [n_rays], depth [n_rays], weights [S])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    ForwardLauncher launch, const at::Tensor& sigmas, const at::Tensor& rgbs,
    const at::Tensor& t_start, const at::Tensor& t_end, const at::Tensor& offsets,
    double threshold);
// nerfx::composite_rays_backward -> (grad_sigmas [S], grad_rgbs [S, 3]); grad_weights may be an
// empty tensor (no gradient).
std::tuple<at::Tensor, at::Tensor> backward(
    BackwardLauncher launch, const at::Tensor& grad_color, const at::Tensor& grad_opacity,
    const at::Tensor& grad_depth, const at::Tensor& grad_weights, const at::Tensor& sigmas,
    const at::Tensor& rgbs, const at::Tensor& t_start, const at::Tensor& t_end,
    const at::Tensor& offsets, const at::Tensor& color, const at::Tensor& opacity,
    const at::Tensor& depth, const at::Tensor& weights, double threshold);

}  // namespace nerfx::composite
