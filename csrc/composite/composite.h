// Volume compositing of packed samples: launcher declarations and the registered ops.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "nerfx/composite.h"

namespace nerfx::composite {

// Packed samples of n_rays rays, ray r owning samples [offsets[r], offsets[r + 1]):
//   sigmas [S], rgbs [S, 3], t_start [S], t_end [S], offsets [n_rays + 1] int64
// Outputs: color [n_rays, 3], opacity [n_rays], depth [n_rays], weights [S].
// t_start and t_end are float or double, the type of the outputs and the arithmetic; with float,
// sigmas and rgbs may each be half (the forward's checks enforce it).
struct Packed {
  at::Tensor sigmas, rgbs, t_start, t_end, offsets;
};
struct Outputs {
  at::Tensor color, opacity, depth, weights;
};

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>, TypeTag<sigma_t>, TypeTag<color_t>) with the packed inputs' types:
// scalar_t from t_start; sigma_t and color_t scalar_t, or at::Half beside float.
template <typename F>
void dispatch_types(const Packed& in, F&& f) {
  if (in.t_start.scalar_type() == at::kDouble) {
    f(TypeTag<double>{}, TypeTag<double>{}, TypeTag<double>{});
    return;
  }
  const bool half_sigmas = in.sigmas.scalar_type() == at::kHalf;
  const bool half_colors = in.rgbs.scalar_type() == at::kHalf;
  if (half_sigmas && half_colors) {
    f(TypeTag<float>{}, TypeTag<at::Half>{}, TypeTag<at::Half>{});
  } else if (half_sigmas) {
    f(TypeTag<float>{}, TypeTag<at::Half>{}, TypeTag<float>{});
  } else if (half_colors) {
    f(TypeTag<float>{}, TypeTag<float>{}, TypeTag<at::Half>{});
  } else {
    f(TypeTag<float>{}, TypeTag<float>{}, TypeTag<float>{});
  }
}

void forward_cpu(const Packed& in, double threshold, Outputs& out);
// grad_weights may be undefined; grad_sigmas [S], grad_rgbs [S, 3] are written.
void backward_cpu(const Packed& in, double threshold, const Outputs& saved,
                  const Outputs& grads, at::Tensor& grad_sigmas, at::Tensor& grad_rgbs);
#ifdef NERFX_WITH_CUDA
void forward_cuda(const Packed& in, double threshold, Outputs& out);
void backward_cuda(const Packed& in, double threshold, const Outputs& saved,
                   const Outputs& grads, at::Tensor& grad_sigmas, at::Tensor& grad_rgbs);
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_start,
    const at::Tensor& t_end, const at::Tensor& offsets, double threshold);
// -> (grad_sigmas [S], grad_rgbs [S, 3]); grad_weights may be an empty tensor (no gradient).
std::tuple<at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_color, const at::Tensor& grad_opacity, const at::Tensor& grad_depth,
    const at::Tensor& grad_weights, const at::Tensor& sigmas, const at::Tensor& rgbs,
    const at::Tensor& t_start, const at::Tensor& t_end, const at::Tensor& offsets,
    const at::Tensor& color, const at::Tensor& opacity, const at::Tensor& depth,
    const at::Tensor& weights, double threshold);

}  // namespace nerfx::composite
