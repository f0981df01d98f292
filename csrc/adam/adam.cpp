// Adam step skipping zero-gradient entries: argument checks and the device switch.
#include "adam/adam.h"

#include <initializer_list>
#include <utility>

namespace nerfx::adam {

namespace {

// A GradScaler scalar (grad_scale, found_inf): float32, one element, on param's device.
at::Tensor checked_scalar(const std::optional<at::Tensor>& t, const char* name,
                          const at::Tensor& param) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == 1,
              "adam_step: ", name, " must be a float32 tensor of one element, got ",
              t->scalar_type(), " ", t->sizes());
  TORCH_CHECK(t->device() == param.device(), "adam_step: ", name, " is on ", t->device(),
              ", param on ", param.device());
  return *t;
}

}  // namespace

void step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
          const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr, double beta1,
          double beta2, double eps, const std::optional<at::Tensor>& grad_scale,
          const std::optional<at::Tensor>& found_inf) {
  const at::ScalarType stored = param.scalar_type();
  TORCH_CHECK(stored == at::kFloat || stored == at::kDouble || stored == at::kHalf,
              "adam_step: param must be float32, float64 or float16, got ", stored);
  const at::ScalarType state_type = stored == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad.scalar_type() == stored, "adam_step: grad must be ", stored, " like param, "
              "got ", grad.scalar_type());
  for (const auto& [name, t] : {std::pair{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}}) {
    TORCH_CHECK(t->scalar_type() == state_type, "adam_step: ", name, " must be ", state_type,
                " for ", stored, " params, got ", t->scalar_type());
  }
  TORCH_CHECK(step.scalar_type() == at::kInt, "adam_step: step must be int32, got ",
              step.scalar_type());
  for (const auto& [name, t] : {std::pair{"grad", &grad}, {"exp_avg", &exp_avg},
                                {"exp_avg_sq", &exp_avg_sq}, {"step", &step}}) {
    TORCH_CHECK(t->sizes() == param.sizes(), "adam_step: ", name, " must have param's shape ",
                param.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->device() == param.device(), "adam_step: ", name, " is on ", t->device(),
                ", param on ", param.device());
  }
  // Updated in place through flat pointers: no hidden copies that would drop the update.
  for (const auto& [name, t] : {std::pair{"param", &param}, {"exp_avg", &exp_avg},
                                {"exp_avg_sq", &exp_avg_sq}, {"step", &step}}) {
    TORCH_CHECK(t->is_contiguous(), "adam_step: ", name, " must be contiguous");
  }
  TORCH_CHECK(lr >= 0 && eps >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
              "adam_step: needs lr >= 0, eps >= 0 and betas in [0, 1), got lr=", lr,
              ", betas=(", beta1, ", ", beta2, "), eps=", eps);
  const State state{param, grad.contiguous(), exp_avg, exp_avg_sq, step,
                    checked_scalar(grad_scale, "grad_scale", param),
                    checked_scalar(found_inf, "found_inf", param)};
  if (param.numel() == 0) return;
#ifdef NERFX_WITH_CUDA
  if (param.is_cuda()) {
    step_cuda(state, lr, beta1, beta2, eps);
    return;
  }
#endif
  step_cpu(state, lr, beta1, beta2, eps);
}

}  // namespace nerfx::adam
