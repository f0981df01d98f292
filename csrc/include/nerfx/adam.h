// Adam (Kingma & Ba 2015) for one entry of a parameter tensor, skipping entries whose gradient is
// exactly 0, with a step count per entry, shared by the CPU and CUDA launchers.
//
// Instant-NGP (Muller et al. 2022, sec. 4): "we skip Adam steps for hash table entries whose
// gradient is exactly 0"; tiny-cuda-nn's Adam (optimizers/adam.h, adam_step) returns early for a
// zero gradient and keeps a step count per parameter (`++step[i]`), so an entry's bias correction
// counts the steps that entry took. An entry that was not touched keeps its parameter, moments and
// count bit for bit: no decay of its momentum, no drift.
//
// The arithmetic of a touched entry is torch.optim.Adam's (single-tensor, amsgrad off, no weight
// decay), operation for operation, so an entry touched at every step follows torch's to rounding:
//   m <- lerp(m, g, 1 - beta1)             exp_avg.lerp_(grad, 1 - beta1)
//   v <- v * beta2 + (1 - beta2) * g * g   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
//   p <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc_k = 1 - beta_k^t
// (tiny-cuda-nn adds eps to sqrt(v) before the bias correction; with Instant-NGP's eps = 1e-15 the
// two agree to rounding.) Templated on the stored parameter type param_t (float, double, half)
// and the state type state_t (float for float and half tables, double for double).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "nerfx/common.h"

namespace nerfx::adam {

// One step's settings in the state type. The host computes them in double (the differences
// 1 - beta and the logarithms ln beta), so they round once, as torch's Python scalars do.
template <typename state_t>
struct Settings {
  state_t lr, beta2, eps;
  state_t one_minus_beta1, one_minus_beta2;  // 1 - beta1, 1 - beta2
  state_t log_beta1, log_beta2;              // ln beta1, ln beta2
};

// The settings of a step of learning rate lr (host code).
template <typename state_t>
inline Settings<state_t> make_settings(double lr, double beta1, double beta2, double eps) {
  Settings<state_t> s;
  s.lr = state_t(lr);
  s.beta2 = state_t(beta2);
  s.eps = state_t(eps);
  s.one_minus_beta1 = state_t(1.0 - beta1);
  s.one_minus_beta2 = state_t(1.0 - beta2);
  s.log_beta1 = state_t(std::log(beta1));
  s.log_beta2 = state_t(std::log(beta2));
  return s;
}

// 1 - beta^t from ln beta, as -expm1(t ln beta): full relative precision where 1 - beta^t
// cancels (beta2 = 0.99 at t = 1 leaves 0.01), which 1 - powf(beta, t) loses in float.
template <typename state_t>
NERFX_HD inline state_t bias_correction(state_t log_beta, int32_t t) {
  return -expm1_of(state_t(t) * log_beta);
}

// The moments and parameter of touched entries after their step, given the bias corrections of
// their new counts t: bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t). V is state_t, or on the
// CPU a SIMD batch of state_t (a GCC vector, with sqrt_of specialised for it): the same IEEE
// operations either way, so a batch lane and a lone entry give the same bits.
template <typename V, typename state_t>
NERFX_HD inline void adam_update_by(const V& g, const V& step_size, const V& bc2_sqrt,
                                    const Settings<state_t>& s, V& param, V& m, V& v) {
  m = m + s.one_minus_beta1 * (g - m);  // torch's lerp for a weight below 0.5
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  const V denom = sqrt_of(v) / bc2_sqrt + s.eps;
  param = param - step_size * m / denom;
}

// The step size of a count whose bias correction is bc1: lr / bc1 (the CPU launcher computes it
// once per count and step, into a table, and passes it to adam_update_by: the same bits).
template <typename V, typename state_t>
NERFX_HD inline V step_size_of(const V& bc1, const Settings<state_t>& s) {
  return s.lr / bc1;
}

template <typename V, typename state_t>
NERFX_HD inline void adam_update(const V& g, const V& bc1, const V& bc2_sqrt,
                                 const Settings<state_t>& s, V& param, V& m, V& v) {
  adam_update_by(g, step_size_of(bc1, s), bc2_sqrt, s, param, m, v);
}

// The factor that unscales a mixed-precision step's gradients: 1 / the loss scale, computed as
// torch.amp.GradScaler's unscale_ computes it (scale.double().reciprocal().float()), so a step
// unscaled here equals one unscaled by GradScaler first, bit for bit, for float32 gradients.
NERFX_HD inline float inverse_scale(float scale) { return float(1.0 / double(scale)); }

// Entry i of param [n], grad [n], exp_avg [n], exp_avg_sq [n], step [n] (int32), in place, the
// bias corrections computed for its count; the gradient is grad[i] * inv_scale (1 without a loss
// scale: exact). A gradient of exactly 0 (either sign) leaves all five untouched. (The CPU
// launcher steps every entry branch-free in SIMD batches instead, with the bias corrections read
// from a table: see BiasTable.)
template <typename param_t, typename state_t>
NERFX_HD inline void update_entry(int64_t i, param_t* param, const param_t* grad,
                                  state_t* exp_avg, state_t* exp_avg_sq, int32_t* step,
                                  const Settings<state_t>& s, state_t inv_scale) {
  const state_t g = state_t(grad[i]);
  if (g == state_t(0)) return;  // Instant-NGP sec. 4; tiny-cuda-nn `if (gradient == 0) return;`
  const int32_t t = step[i] + 1;
  step[i] = t;
  state_t p = state_t(param[i]), m = exp_avg[i], v = exp_avg_sq[i];
  adam_update(g * inv_scale, bias_correction(s.log_beta1, t),
              sqrt_of(bias_correction(s.log_beta2, t)), s, p, m, v);
  param[i] = param_t(p);
  exp_avg[i] = m;
  exp_avg_sq[i] = v;
}

// The bias corrections of every count t in [0, size) (host memory), computed in double and
// rounded once: bc1[t] = 1 - beta1^t, bc2_sqrt[t] = sqrt(1 - beta2^t). A table stops where both
// have become exactly 1 in state_t (saturated: t >= 1724 for float and beta2 = 0.99), after which
// they stay 1, or at kMaxSize counts; counts past an unsaturated end are computed directly.
template <typename state_t>
struct BiasTable {
  static constexpr int32_t kMaxSize = 1 << 16;
  std::vector<state_t> bc1, bc2_sqrt;  // [size] each
  bool saturated = false;
  state_t log_beta1 = 0, log_beta2 = 0;

  BiasTable(double beta1, double beta2)
      : log_beta1(state_t(std::log(beta1))), log_beta2(state_t(std::log(beta2))) {
    const double l1 = std::log(beta1), l2 = std::log(beta2);
    for (int32_t t = 0; t < kMaxSize && !saturated; ++t) {
      bc1.push_back(state_t(bias_correction(l1, t)));
      bc2_sqrt.push_back(state_t(std::sqrt(bias_correction(l2, t))));
      saturated = bc1.back() == state_t(1) && bc2_sqrt.back() == state_t(1);
    }
  }
  state_t bias1(int32_t t) const {
    const int32_t last = int32_t(bc1.size()) - 1;
    return t <= last ? bc1[t] : saturated ? state_t(1) : bias_correction(log_beta1, t);
  }
  state_t bias2_sqrt(int32_t t) const {
    const int32_t last = int32_t(bc2_sqrt.size()) - 1;
    return t <= last ? bc2_sqrt[t]
           : saturated ? state_t(1) : sqrt_of(bias_correction(log_beta2, t));
  }
};

}  // namespace nerfx::adam
