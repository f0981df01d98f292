// Adam step skipping zero-gradient entries: the entry point of both devices, argument checks; the
// device's launcher (adam_cpu.cpp, adam_cuda.cu) steps the entries.
#include "adam/adam.h"

#include <initializer_list>
#include <utility>

#include "checks.h"

namespace nerfx::adam {

using namespace nerfx::checks;

namespace {

constexpr const char* kOp = "adam_step";

// A GradScaler scalar (grad_scale, found_inf): float32, one element, on param's device.
at::Tensor checked_scalar(const std::optional<at::Tensor>& t, const char* name,
                          const at::Tensor& param) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == 1, kOp, ": ", name,
              " must be a torch.float32 tensor of one element (as torch.amp.GradScaler keeps "
              "it), got ", dtype_name(t->scalar_type()), " ", t->sizes());
  check_device(kOp, name, *t, "param", param);
  return *t;
}

}  // namespace

void step(Launcher launch, const at::Tensor& param, const at::Tensor& grad,
          const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
          double lr, double beta1, double beta2, double eps,
          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  check_dtype(kOp, "param", param, {at::kFloat, at::kDouble, at::kHalf});
  const at::ScalarType stored = param.scalar_type();
  const at::ScalarType state_type = stored == at::kDouble ? at::kDouble : at::kFloat;
  check_dtype(kOp, "grad", grad, {stored}, " like param");
  for (const auto& [name, t] : {std::pair{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}}) {
    check_dtype(kOp, name, *t, {state_type}, " for " + dtype_name(stored) + " param");
  }
  check_dtype(kOp, "step", step, {at::kInt});
  for (const auto& [name, t] : {std::pair{"grad", &grad}, {"exp_avg", &exp_avg},
                                {"exp_avg_sq", &exp_avg_sq}, {"step", &step}}) {
    check_same_shape(kOp, name, *t, "param", param);
    check_device(kOp, name, *t, "param", param);
  }
  // Updated in place through flat pointers: no hidden copies that would drop the update.
  for (const auto& [name, t] : {std::pair{"param", &param}, {"exp_avg", &exp_avg},
                                {"exp_avg_sq", &exp_avg_sq}, {"step", &step}}) {
    check_contiguous(kOp, name, *t, "it is updated in place");
  }
  TORCH_CHECK(lr >= 0 && eps >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
              kOp, ": needs lr >= 0, eps >= 0 and betas in [0, 1), got lr=", lr,
              ", betas=(", beta1, ", ", beta2, "), eps=", eps);
  const State state{param, grad.contiguous(), exp_avg, exp_avg_sq, step,
                    checked_scalar(grad_scale, "grad_scale", param),
                    checked_scalar(found_inf, "found_inf", param)};
  if (param.numel() > 0) launch(state, lr, beta1, beta2, eps);
}

}  // namespace nerfx::adam
