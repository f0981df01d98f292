// Volume compositing: argument checks, allocation and the device switch, shared by CPU and CUDA.
#include "composite/composite.h"

#include <utility>

namespace nerfx::composite {
namespace {

Packed checked(const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_start,
               const at::Tensor& t_end, const at::Tensor& offsets) {
  const int64_t S = sigmas.numel();
  TORCH_CHECK(sigmas.dim() == 1, "composite_rays: sigmas must be [S], got ", sigmas.sizes());
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(0) == S && rgbs.size(1) == 3,
              "composite_rays: rgbs must be [S, 3] with S = ", S, ", got ", rgbs.sizes());
  TORCH_CHECK(t_start.sizes() == sigmas.sizes() && t_end.sizes() == sigmas.sizes(),
              "composite_rays: t_start and t_end must be [S]");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.scalar_type() == at::kLong,
              "composite_rays: offsets must be int64 [n_rays + 1]");
  const at::ScalarType type = t_start.scalar_type();
  TORCH_CHECK((type == at::kFloat || type == at::kDouble) && t_end.scalar_type() == type,
              "composite_rays: t_start and t_end must both be float32 or both float64, got ",
              type, " and ", t_end.scalar_type());
  for (const auto& [name, t] : {std::pair{"sigmas", &sigmas}, {"rgbs", &rgbs}}) {
    const at::ScalarType stored = t->scalar_type();
    TORCH_CHECK(stored == type || (type == at::kFloat && stored == at::kHalf),
                "composite_rays: ", name, " must be ", type,
                type == at::kFloat ? " or float16" : "", " like t_start, got ", stored);
  }
  for (const at::Tensor* t : {&rgbs, &t_start, &t_end, &offsets}) {
    TORCH_CHECK(t->device() == sigmas.device(), "composite_rays: all tensors must be on ",
                sigmas.device());
  }
  // Sizes alone, so on every device: with no rays there is nothing to own samples.
  TORCH_CHECK(offsets.numel() > 1 || S == 0, "composite_rays: offsets of one entry (no rays) "
              "need S = 0, got S = ", S);
  Packed in{sigmas.contiguous(), rgbs.contiguous(), t_start.contiguous(), t_end.contiguous(),
            offsets.contiguous()};
  if (!in.offsets.is_cuda()) {
    // One pass over [n_rays + 1] integers. CUDA kernels test their own ray (a device-side
    // assert, no synchronisation here) and never touch samples outside [0, S).
    const int64_t n_rays = in.offsets.numel() - 1;
    const int64_t* offs = in.offsets.data_ptr<int64_t>();
    for (int64_t r = 0; r < n_rays; ++r) {
      TORCH_CHECK(valid_ray_range(r, n_rays, offs, S), "composite_rays: offsets must rise from 0 "
                  "to S = ", S, "; ray ", r, " has [", offs[r], ", ", offs[r + 1], ")");
    }
    TORCH_CHECK(n_rays > 0 || (offs[0] == 0 && S == 0), "composite_rays: offsets = [",
                offs[0], "] (no rays) needs offsets[0] = 0 and S = 0, got S = ", S);
  }
  return in;
}

// A tensor of the given shape, dtype and device, else an error naming it.
void check_like(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == shape, "composite_rays backward: ", name, " must be ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(),
              "composite_rays backward: ", name, " must be ", like.scalar_type(), " on ",
              like.device(), ", got ", t.scalar_type(), " on ", t.device());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_start,
    const at::Tensor& t_end, const at::Tensor& offsets, double threshold) {
  const Packed in = checked(sigmas, rgbs, t_start, t_end, offsets);
  const int64_t n_rays = offsets.numel() - 1;
  // No zero-fill: with offsets rising from 0 to S every ray writes its totals and every sample
  // its weight (0 past the threshold), on both devices.
  const auto options = t_start.options();  // the outputs are in t_start's type
  Outputs out{at::empty({n_rays, 3}, options), at::empty({n_rays}, options),
              at::empty({n_rays}, options), at::empty_like(in.t_start)};
  if (n_rays > 0) {
#ifdef NERFX_WITH_CUDA
    if (sigmas.is_cuda()) {
      forward_cuda(in, threshold, out);
    } else
#endif
    {
      forward_cpu(in, threshold, out);
    }
  }
  return {out.color, out.opacity, out.depth, out.weights};
}

std::tuple<at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_color, const at::Tensor& grad_opacity, const at::Tensor& grad_depth,
    const at::Tensor& grad_weights, const at::Tensor& sigmas, const at::Tensor& rgbs,
    const at::Tensor& t_start, const at::Tensor& t_end, const at::Tensor& offsets,
    const at::Tensor& color, const at::Tensor& opacity, const at::Tensor& depth,
    const at::Tensor& weights, double threshold) {
  const Packed in = checked(sigmas, rgbs, t_start, t_end, offsets);
  const int64_t n_rays = offsets.numel() - 1, S = sigmas.numel();
  // The saved outputs and their gradients, in t_start's type: [n_rays, 3], [n_rays], [n_rays],
  // [S] (grad_weights may be [0]: no gradient).
  check_like(color, "color", {n_rays, 3}, t_start);
  check_like(opacity, "opacity", {n_rays}, t_start);
  check_like(depth, "depth", {n_rays}, t_start);
  check_like(weights, "weights", {S}, t_start);
  check_like(grad_color, "grad_color", {n_rays, 3}, t_start);
  check_like(grad_opacity, "grad_opacity", {n_rays}, t_start);
  check_like(grad_depth, "grad_depth", {n_rays}, t_start);
  if (grad_weights.numel() != 0 || grad_weights.sizes() != at::IntArrayRef({0})) {
    check_like(grad_weights, "grad_weights", {S}, t_start);
  }
  const Outputs saved{color.contiguous(), opacity.contiguous(), depth.contiguous(),
                      weights.contiguous()};
  const Outputs grads{grad_color.contiguous(), grad_opacity.contiguous(), grad_depth.contiguous(),
                      grad_weights.numel() == 0 ? at::Tensor() : grad_weights.contiguous()};
  // Every sample writes both gradients (0 past the threshold), in its input's type: no
  // zero-fill.
  at::Tensor grad_sigmas = at::empty_like(in.sigmas);
  at::Tensor grad_rgbs = at::empty_like(in.rgbs);
  if (offsets.numel() > 1) {
#ifdef NERFX_WITH_CUDA
    if (sigmas.is_cuda()) {
      backward_cuda(in, threshold, saved, grads, grad_sigmas, grad_rgbs);
    } else
#endif
    {
      backward_cpu(in, threshold, saved, grads, grad_sigmas, grad_rgbs);
    }
  }
  return {grad_sigmas, grad_rgbs};
}

}  // namespace nerfx::composite
