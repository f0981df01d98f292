// Adam step skipping zero-gradient entries: the launchers of each device and the entry point
// they plug into.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "nerfx/adam.h"

namespace nerfx::adam {

// One parameter tensor's Adam state, all with the parameter's n entries, contiguous, one device:
//   param      [n] float, double or half (any shape; read flat), updated in place
//   grad       [n] param's dtype
//   exp_avg    [n] state dtype: float for float and half params, double for double; in place
//   exp_avg_sq [n] state dtype, in place
//   step       [n] int32, the steps each entry took, in place
// and, from a mixed-precision step (torch.amp.GradScaler), on the same device or undefined:
//   grad_scale [1] float32, the loss scale the gradients carry (divided out entry by entry)
//   found_inf  [1] float32, nonzero when a gradient overflowed: then nothing changes
struct State {
  at::Tensor param, grad, exp_avg, exp_avg_sq, step, grad_scale, found_inf;
};

// The launchers: one pass over the entries, one per device (adam_cpu.cpp, adam_cuda.cu), called
// by the entry point below with checked state and n > 0 entries.
using Launcher = void (*)(const State& state, double lr, double beta1, double beta2, double eps);

void step_cpu(const State& state, double lr, double beta1, double beta2, double eps);
// The loop step_cpu takes now for float tables: "avx512", "avx2" or "portable" (NERFX_CPU_PATH and
// the CPU's features, cpu_path.h), or cpu::path_name()'s line about a bad NERFX_CPU_PATH.
const char* cpu_loop_name();
#ifdef NERFX_WITH_CUDA
void step_cuda(const State& state, double lr, double beta1, double beta2, double eps);
#endif

// The entry point (adam.cpp): checks, then `launch`. ext.cpp registers it with the CPU launcher
// under the CPU key and with the CUDA launcher under the CUDA key. nerfx::adam_step updates
// param, exp_avg, exp_avg_sq and step in place.
void step(Launcher launch, const at::Tensor& param, const at::Tensor& grad,
          const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, const at::Tensor& step,
          double lr, double beta1, double beta2, double eps,
          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf);

}  // namespace nerfx::adam
