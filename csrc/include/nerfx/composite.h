// Volume compositing (NeRF's quadrature, Max 1995) of one ray's packed samples, shared by the CPU
// and CUDA launchers. A sample i covers [t_start_i, t_end_i] with density sigma_i and colour c_i:
//   alpha_i = 1 - exp(-sigma_i * delta_i),  w_i = T_i * alpha_i,  T_{i+1} = T_i * (1 - alpha_i)
// Marching stops before a sample whose incoming transmittance T_i is below the threshold; such
// samples get zero weight and zero gradient, identically in the forward and backward passes.
//
// Types: scalar_t (float or double) is that of t_start, t_end, the outputs and all arithmetic;
// densities (sigma_t) and colours (color_t) may be stored narrower (half, as a mixed-precision
// network gives them). They are widened on load, and their gradients rounded once on store.
#pragma once

#include "nerfx/common.h"

namespace nerfx::composite {

template <typename scalar_t>
struct RayTotals {
  scalar_t color[3];
  scalar_t opacity;  // sum of weights = 1 - final transmittance
  scalar_t depth;    // sum of weights * sample midpoints
};

// The per-ray outputs (or their gradients) of ray r, from [n_rays, 3] and [n_rays] arrays.
template <typename scalar_t>
NERFX_HD inline RayTotals<scalar_t> load_totals(int64_t r, const scalar_t* color,
                                                const scalar_t* opacity, const scalar_t* depth) {
  return {{color[r * 3], color[r * 3 + 1], color[r * 3 + 2]}, opacity[r], depth[r]};
}

template <typename scalar_t>
NERFX_HD inline void store_totals(int64_t r, const RayTotals<scalar_t>& ray, scalar_t* color,
                                  scalar_t* opacity, scalar_t* depth) {
  for (int k = 0; k < 3; ++k) color[r * 3 + k] = ray.color[k];
  opacity[r] = ray.opacity;
  depth[r] = ray.depth;
}

// Whether ray r of n_rays owns a valid CSR range [offsets[r], offsets[r + 1]) of n_samples
// packed samples: 0 <= begin <= end <= n_samples, the first ray begins at 0 and the last ends at
// n_samples. offsets: [n_rays + 1]. All rays valid <=> offsets rise from 0 to n_samples, so the
// launchers test each ray before touching its samples (the CPU up front, CUDA per thread).
NERFX_HD inline bool valid_ray_range(int64_t r, int64_t n_rays, const int64_t* offsets,
                                     int64_t n_samples) {
  const int64_t begin = offsets[r], end = offsets[r + 1];
  return begin >= 0 && begin <= end && end <= n_samples && (r != 0 || begin == 0) &&
         (r != n_rays - 1 || end == n_samples);
}

// The fraction of light that passes a sample: exp(-sigma * delta) = 1 - alpha.
template <typename scalar_t>
NERFX_HD inline scalar_t survival(scalar_t sigma, scalar_t t_start, scalar_t t_end) {
  return exp_of(-sigma * (t_end - t_start));
}

// Where the compositing loops get sample i's survival: computed on the fly (CUDA) ...
template <typename scalar_t, typename sigma_t = scalar_t>
struct SurvivalOf {
  const sigma_t* sigmas;              // [S]
  const scalar_t *t_start, *t_end;    // [S] each
  NERFX_HD scalar_t operator()(int64_t i) const {
    return survival(scalar_t(sigmas[i]), t_start[i], t_end[i]);
  }
};

// ... or read from an array of survival() values computed beforehand with a vectorised exp (CPU).
template <typename scalar_t>
struct SurvivalFrom {
  const scalar_t* values;  // [S]
  NERFX_HD scalar_t operator()(int64_t i) const { return values[i]; }
};

// Forward over one ray's samples [begin, end). survive: sample -> survival (see above),
// rgbs: [S, 3], t_*: [S]; weights: [S] (written)
template <typename scalar_t, typename Survival, typename color_t>
NERFX_HD inline RayTotals<scalar_t> composite_ray(int64_t begin, int64_t end, Survival survive,
                                                  const color_t* rgbs, const scalar_t* t_start,
                                                  const scalar_t* t_end, scalar_t threshold,
                                                  scalar_t* weights) {
  RayTotals<scalar_t> out{{0, 0, 0}, 0, 0};
  scalar_t transmittance = 1;
  for (int64_t i = begin; i < end; ++i) {
    if (transmittance < threshold) {
      weights[i] = 0;
      continue;
    }
    const scalar_t keep = survive(i);
    const scalar_t w = transmittance * (1 - keep);
    weights[i] = w;
    for (int k = 0; k < 3; ++k) out.color[k] += w * scalar_t(rgbs[i * 3 + k]);
    out.opacity += w;
    out.depth += w * scalar_t(0.5) * (t_start[i] + t_end[i]);
    transmittance *= keep;
  }
  return out;
}

// Backward over one ray, O(samples), from the saved forward outputs. Every output is a weighted
// sum L = sum_k w_k v_k of a per-sample value v_k (grad_color . c_k + grad_opacity +
// grad_depth * t_mid_k + grad_weight_k); with the suffix sum R_i = sum_{k>i} w_k v_k:
//   dL/dc_i = w_i * grad_color,   dL/dsigma_i = delta_i * (T_{i+1} v_i - R_i)
// totals: the ray's saved outputs; grads: their gradients; grad_weights: [S] or nullptr;
// grad_sigmas [S] and grad_rgbs [S, 3] (written) in the densities' and colours' types.
template <typename scalar_t, typename Survival, typename color_t, typename sigma_t>
NERFX_HD inline void composite_ray_backward(
    int64_t begin, int64_t end, Survival survive, const color_t* rgbs,
    const scalar_t* t_start, const scalar_t* t_end, scalar_t threshold, const scalar_t* weights,
    const RayTotals<scalar_t>& totals, const RayTotals<scalar_t>& grads,
    const scalar_t* grad_weights,
    sigma_t* grad_sigmas, color_t* grad_rgbs) {
  // Total of the weighted values, from the saved outputs (plus the weights' own gradient).
  scalar_t total = grads.opacity * totals.opacity + grads.depth * totals.depth;
  for (int k = 0; k < 3; ++k) total += grads.color[k] * totals.color[k];
  if (grad_weights != nullptr) {
    for (int64_t i = begin; i < end; ++i) total += weights[i] * grad_weights[i];
  }
  scalar_t prefix = 0;  // sum_{k<=i} w_k v_k
  scalar_t transmittance = 1;
  for (int64_t i = begin; i < end; ++i) {
    if (transmittance < threshold) {
      grad_sigmas[i] = sigma_t(0);
      for (int k = 0; k < 3; ++k) grad_rgbs[i * 3 + k] = color_t(0);
      continue;
    }
    const scalar_t delta = t_end[i] - t_start[i];
    const scalar_t keep = survive(i);
    const scalar_t w = transmittance * (1 - keep);
    scalar_t value = grads.opacity + grads.depth * scalar_t(0.5) * (t_start[i] + t_end[i]);
    for (int k = 0; k < 3; ++k) {
      value += grads.color[k] * scalar_t(rgbs[i * 3 + k]);
      grad_rgbs[i * 3 + k] = color_t(w * grads.color[k]);
    }
    if (grad_weights != nullptr) value += grad_weights[i];
    transmittance *= keep;
    prefix += w * value;
    grad_sigmas[i] = sigma_t(delta * (transmittance * value - (total - prefix)));
  }
}

}  // namespace nerfx::composite
