// Volume compositing: the entry points of both devices, argument checks and allocation; the
// device's launcher (composite_cpu.cpp, composite_cuda.cu) runs the loops.
#include "composite/composite.h"

#include <string>
#include <utility>

#include "checks.h"

namespace nerfx::composite {
namespace {

using namespace nerfx::checks;

// The packed samples, checked (sizes, types, one device) and contiguous. The offsets' values are
// the launchers' to check, on the device they live on (no synchronisation here).
Packed checked(const char* op, const at::Tensor& sigmas, const at::Tensor& rgbs,
               const at::Tensor& t_start, const at::Tensor& t_end, const at::Tensor& offsets) {
  check_shape(op, "sigmas", sigmas, "[S]", {kAny});
  const int64_t S = sigmas.size(0);
  check_shape(op, "rgbs", rgbs, "[S, 3]", {S, 3});
  check_shape(op, "t_start", t_start, "[S]", {S});
  check_shape(op, "t_end", t_end, "[S]", {S});
  check_shape(op, "offsets", offsets, "[n_rays + 1]", {kAny});
  TORCH_CHECK(offsets.numel() >= 1, op, ": offsets must be [n_rays + 1], got [0]");
  check_dtype(op, "offsets", offsets, {at::kLong});
  check_dtype(op, "t_start", t_start, {at::kFloat, at::kDouble});
  const at::ScalarType type = t_start.scalar_type();
  check_dtype(op, "t_end", t_end, {type}, " like t_start");
  const std::string beside = " for " + dtype_name(type) + " t_start";
  for (const auto& [name, t] : {std::pair{"sigmas", &sigmas}, {"rgbs", &rgbs}}) {
    if (type == at::kFloat) {
      check_dtype(op, name, *t, {at::kFloat, at::kHalf}, beside);
    } else {
      check_dtype(op, name, *t, {type}, beside);
    }
  }
  for (const auto& [name, t] : {std::pair{"rgbs", &rgbs}, {"t_start", &t_start},
                                {"t_end", &t_end}, {"offsets", &offsets}}) {
    check_device(op, name, *t, "sigmas", sigmas);
  }
  // Sizes alone, so on every device: with no rays there is nothing to own samples.
  TORCH_CHECK(offsets.numel() > 1 || S == 0, op, ": offsets of one entry (no rays) need S = 0, "
              "got S = ", S);
  return {sigmas.contiguous(), rgbs.contiguous(), t_start.contiguous(), t_end.contiguous(),
          offsets.contiguous()};
}

// A saved output or its gradient: the given shape, in t_start's type, on sigmas' device.
void check_like(const char* op, const char* name, const at::Tensor& t, const char* label,
                at::IntArrayRef shape, const Packed& in) {
  check_shape(op, name, t, label, shape);
  check_dtype(op, name, t, {in.t_start.scalar_type()}, " like t_start");
  check_device(op, name, t, "sigmas", in.sigmas);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    ForwardLauncher launch, const at::Tensor& sigmas, const at::Tensor& rgbs,
    const at::Tensor& t_start, const at::Tensor& t_end, const at::Tensor& offsets,
    double threshold) {
  const Packed in = checked("composite_rays", sigmas, rgbs, t_start, t_end, offsets);
  const int64_t n_rays = offsets.numel() - 1;
  // No zero-fill: the launcher writes every ray's totals and every sample's weight.
  const auto options = in.t_start.options();  // the outputs are in t_start's type
  Outputs out{at::empty({n_rays, 3}, options), at::empty({n_rays}, options),
              at::empty({n_rays}, options), at::empty_like(in.t_start)};
  if (n_rays > 0) launch(in, threshold, out);
  return {out.color, out.opacity, out.depth, out.weights};
}

std::tuple<at::Tensor, at::Tensor> backward(
    BackwardLauncher launch, const at::Tensor& grad_color, const at::Tensor& grad_opacity,
    const at::Tensor& grad_depth, const at::Tensor& grad_weights, const at::Tensor& sigmas,
    const at::Tensor& rgbs, const at::Tensor& t_start, const at::Tensor& t_end,
    const at::Tensor& offsets, const at::Tensor& color, const at::Tensor& opacity,
    const at::Tensor& depth, const at::Tensor& weights, double threshold) {
  const char* op = "composite_rays_backward";
  const Packed in = checked(op, sigmas, rgbs, t_start, t_end, offsets);
  const int64_t n_rays = offsets.numel() - 1, S = sigmas.numel();
  check_like(op, "color", color, "[n_rays, 3]", {n_rays, 3}, in);
  check_like(op, "opacity", opacity, "[n_rays]", {n_rays}, in);
  check_like(op, "depth", depth, "[n_rays]", {n_rays}, in);
  check_like(op, "weights", weights, "[S]", {S}, in);
  check_like(op, "grad_color", grad_color, "[n_rays, 3]", {n_rays, 3}, in);
  check_like(op, "grad_opacity", grad_opacity, "[n_rays]", {n_rays}, in);
  check_like(op, "grad_depth", grad_depth, "[n_rays]", {n_rays}, in);
  if (grad_weights.numel() != 0 || grad_weights.dim() != 1) {  // [0]: no gradient
    check_like(op, "grad_weights", grad_weights, "[S]", {S}, in);
  }
  const Outputs saved{color.contiguous(), opacity.contiguous(), depth.contiguous(),
                      weights.contiguous()};
  const Outputs grads{grad_color.contiguous(), grad_opacity.contiguous(), grad_depth.contiguous(),
                      grad_weights.numel() == 0 ? at::Tensor() : grad_weights.contiguous()};
  // No zero-fill: the launcher writes both gradients of every sample, in its input's type.
  at::Tensor grad_sigmas = at::empty_like(in.sigmas);
  at::Tensor grad_rgbs = at::empty_like(in.rgbs);
  if (n_rays > 0) launch(in, threshold, saved, grads, grad_sigmas, grad_rgbs);
  return {grad_sigmas, grad_rgbs};
}

}  // namespace nerfx::composite
