// Volume compositing on the CPU, AVX2 loops: float32 positions, densities and colours in float32
// or half (F16C), eight consecutive samples of one ray per step. The math is the header's
// composite_ray / composite_ray_backward (nerfx/composite.h) with the sequential transmittance
// T_{i+1} = T_i * keep_i taken blockwise: within a block of 8 an inclusive product scan of the
// survivals (3 shuffle-multiply steps), carried from block to block; the backward's running sum
// of w_k v_k likewise. Only the rounding order differs from the portable loops (and a polynomial
// exp within 2 ulp of the library's), so the results agree within the op's float32 tolerances.
// A sample is past the threshold when its incoming transmittance is: once one is, every later
// sample of the ray is too (weight 0, gradient 0), in both passes alike, which compute the
// transmittance with the same instructions.
//
// Compiled for AVX2 between NERFX_AVX2_FUNCTIONS_BEGIN and _END (cpu_path.h says how).
#include "composite/composite.h"
#include "cpu_path.h"

#if NERFX_CPU_AVX2_BUILT
#include <immintrin.h>

#include <cstdint>
#include <cstring>

NERFX_AVX2_FUNCTIONS_BEGIN

namespace nerfx::composite {
namespace {

// exp(x), Cephes' expf (2^n e^r with |r| <= ln2 / 2, degree-6 polynomial): within 2 ulp of the
// correctly rounded value for x in [-87.33, 88]; x is clamped to that range (below it, where
// float32's exp is subnormal or 0, this gives exp(-87.33) = 1.2e-38: as a survival it ends the
// ray all the same); NaN stays NaN.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.33654f), _mm256_min_ps(_mm256_set1_ps(88.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i scale = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}

// v moved K lanes up (lane j gets lane j - K), the lowest K lanes set to fill.
template <int K>
inline __m256 shifted_up(__m256 v, __m256 fill) {
  const __m256i index = _mm256_max_epi32(
      _mm256_sub_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(K)),
      _mm256_setzero_si256());
  return _mm256_blend_ps(_mm256_permutevar8x32_ps(v, index), fill, (1 << K) - 1);
}

// Inclusive scans over the 8 lanes: lane j gets v_0 * ... * v_j (v_0 + ... + v_j).
inline __m256 product_scan(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.0f);
  v = _mm256_mul_ps(v, shifted_up<1>(v, one));
  v = _mm256_mul_ps(v, shifted_up<2>(v, one));
  return _mm256_mul_ps(v, shifted_up<4>(v, one));
}
inline __m256 sum_scan(__m256 v) {
  const __m256 zero = _mm256_setzero_ps();
  v = _mm256_add_ps(v, shifted_up<1>(v, zero));
  v = _mm256_add_ps(v, shifted_up<2>(v, zero));
  return _mm256_add_ps(v, shifted_up<4>(v, zero));
}

inline __m256 last_lane(__m256 v) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(7)); }

inline float lane_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// A per-sample vector w in the layout of 8 samples' interleaved rgb (24 floats in 3 vectors):
// part 0 = [w0 w0 w0 w1 w1 w1 w2 w2], part 1 = [w2 w3 w3 w3 w4 w4 w4 w5], part 2 = [w5 w5 w6 ...].
template <int part>
inline __m256 per_channel(__m256 w) {
  static_assert(part >= 0 && part < 3);
  const __m256i index = part == 0   ? _mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2)
                        : part == 1 ? _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5)
                                    : _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7);
  return _mm256_permutevar8x32_ps(w, index);
}

// The per-sample sum of the three channels of 8 interleaved rgb triples (the inverse layout of
// per_channel): lane i gets x_i0 + x_i1 + x_i2.
inline __m256 channel_sum(__m256 v0, __m256 v1, __m256 v2) {
  // Each channel gathered by two blends into a lane order that one permute puts right.
  const __m256 r = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x92), v2, 0x24);
  const __m256 g = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x24), v2, 0x49);
  const __m256 b = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x49), v2, 0x92);
  return _mm256_add_ps(
      _mm256_add_ps(_mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5)),
                    _mm256_permutevar8x32_ps(g, _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6))),
      _mm256_permutevar8x32_ps(b, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7)));
}

// Loads and stores of 8 values (24 for rgb) as float or as half (IEEE binary16 bits).
template <bool half>
inline __m256 load8(const void* p, int64_t i) {
  if constexpr (half) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
        static_cast<const uint16_t*>(p) + i)));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  }
}
template <bool half>
inline void store8(void* p, int64_t i, __m256 v) {
  if constexpr (half) {  // round to nearest even, as a float -> half conversion does
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm256_storeu_ps(static_cast<float*>(p) + i, v);
  }
}

constexpr int64_t kLanes = 8;

// Lanes j < n set (for the first n of 8 values: a ray's last, partial block).
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The first n of the 8 values at p + i (n may lie outside [0, 8]: all or none of them), 0 past
// them; masked loads and stores read and write nothing past them. Half values go through a small
// buffer (AVX2 has no masked 16-bit loads).
template <bool half>
inline __m256 load_first(const void* p, int64_t i, int64_t n) {
  if constexpr (half) {
    alignas(16) uint16_t part[kLanes] = {};
    n = n < 0 ? 0 : (n > kLanes ? kLanes : n);
    std::memcpy(part, static_cast<const uint16_t*>(p) + i, n * sizeof(uint16_t));
    return load8<true>(part, 0);
  } else {
    return _mm256_maskload_ps(static_cast<const float*>(p) + i, first_lanes(n));
  }
}
template <bool half>
inline void store_first(void* p, int64_t i, int64_t n, __m256 v) {
  if constexpr (half) {
    alignas(16) uint16_t part[kLanes];
    n = n < 0 ? 0 : (n > kLanes ? kLanes : n);
    store8<true>(part, 0, v);
    std::memcpy(static_cast<uint16_t*>(p) + i, part, n * sizeof(uint16_t));
  } else {
    _mm256_maskstore_ps(static_cast<float*>(p) + i, first_lanes(n), v);
  }
}

// One block's inputs: 8 samples, or the n < 8 of a ray's end padded with sigma 0, t 0, rgb 0
// (survival 1, weight 0: nothing moves the ray's sums or transmittance).
struct Block {
  __m256 sigma, t_start, t_end, rgb[3];
};

// Where a ray's blocks come from: the arrays themselves, or for the last n < 8 samples a padded
// copy in `pad`. Element sizes as the types are stored.
template <bool half_sigmas, bool half_rgbs>
struct Loader {
  const void* sigmas;
  const void* rgbs;
  const float *t_start, *t_end;

  Block full(int64_t i) const {
    return {load8<half_sigmas>(sigmas, i), _mm256_loadu_ps(t_start + i),
            _mm256_loadu_ps(t_end + i),
            {load8<half_rgbs>(rgbs, 3 * i), load8<half_rgbs>(rgbs, 3 * i + 8),
             load8<half_rgbs>(rgbs, 3 * i + 16)}};
  }

  Block partial(int64_t i, int64_t n) const {
    return {load_first<half_sigmas>(sigmas, i, n), load_first<false>(t_start, i, n),
            load_first<false>(t_end, i, n),
            {load_first<half_rgbs>(rgbs, 3 * i, 3 * n),
             load_first<half_rgbs>(rgbs, 3 * i + 8, 3 * n - 8),
             load_first<half_rgbs>(rgbs, 3 * i + 16, 3 * n - 16)}};
  }
};

// The transmittance of one block from the incoming one (carry, in every lane): survivals,
// T_i before each sample, T_{i+1} after it, which samples are still above the threshold
// (a mask, all-ones lanes; false from the first one below on) and whether any is not.
struct Light {
  __m256 keep, before, after, alive;
  bool ends;
};

inline Light light_of(const Block& b, __m256 carry, __m256 threshold) {
  const __m256 keep = exp_ps(_mm256_mul_ps(_mm256_sub_ps(b.t_start, b.t_end), b.sigma));
  const __m256 through = product_scan(keep);
  const __m256 before = _mm256_mul_ps(carry, shifted_up<1>(through, _mm256_set1_ps(1.0f)));
  const int below = _mm256_movemask_ps(_mm256_cmp_ps(before, threshold, _CMP_LT_OQ));
  __m256 alive = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  if (below != 0) {  // lanes from the first one below on
    alive = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(__builtin_ctz(below)),
                                                   _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  return {keep, before, _mm256_mul_ps(carry, through), alive, below != 0};
}

template <bool half_sigmas, bool half_rgbs>
void forward_rays(const VectorRays& in, const VectorForward& out, int64_t r_begin,
                  int64_t r_end) {
  const Loader<half_sigmas, half_rgbs> load{in.sigmas, in.rgbs, in.t_start, in.t_end};
  const __m256 threshold = _mm256_set1_ps(in.threshold);
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t begin = in.offsets[r], end = in.offsets[r + 1];
    __m256 carry = one, opacity = _mm256_setzero_ps(), depth = _mm256_setzero_ps();
    __m256 color[3] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = begin; i < end; i += kLanes) {
      const int64_t n = end - i < kLanes ? end - i : kLanes;
      const Block b = n == kLanes ? load.full(i) : load.partial(i, n);
      const Light light = light_of(b, carry, threshold);
      const __m256 w =
          _mm256_and_ps(light.alive, _mm256_mul_ps(light.before, _mm256_sub_ps(one, light.keep)));
      if (n == kLanes) {
        _mm256_storeu_ps(out.weights + i, w);
      } else {
        store_first<false>(out.weights, i, n, w);
      }
      opacity = _mm256_add_ps(opacity, w);
      depth = _mm256_fmadd_ps(w, _mm256_add_ps(b.t_start, b.t_end), depth);  // halved below
      color[0] = _mm256_fmadd_ps(per_channel<0>(w), b.rgb[0], color[0]);
      color[1] = _mm256_fmadd_ps(per_channel<1>(w), b.rgb[1], color[1]);
      color[2] = _mm256_fmadd_ps(per_channel<2>(w), b.rgb[2], color[2]);
      carry = last_lane(light.after);
      if (light.ends && i + kLanes < end) {  // the rest of the ray is past the threshold
        std::memset(out.weights + i + kLanes, 0, (end - i - kLanes) * sizeof(float));
        break;
      }
    }
    alignas(32) float sums[3 * kLanes];
    for (int k = 0; k < 3; ++k) _mm256_store_ps(sums + k * kLanes, color[k]);
    for (int k = 0; k < 3; ++k) {
      float total = 0;
      for (int j = k; j < 3 * kLanes; j += 3) total += sums[j];
      out.color[r * 3 + k] = total;
    }
    out.opacity[r] = lane_sum(opacity);
    out.depth[r] = 0.5f * lane_sum(depth);  // sum of w * (t_start + t_end) / 2, exactly
  }
}

template <bool half_sigmas, bool half_rgbs>
void backward_rays(const VectorRays& in, const VectorBackward& io, int64_t r_begin,
                   int64_t r_end) {
  const Loader<half_sigmas, half_rgbs> load{in.sigmas, in.rgbs, in.t_start, in.t_end};
  const __m256 threshold = _mm256_set1_ps(in.threshold);
  const __m256 one = _mm256_set1_ps(1.0f);
  constexpr size_t sigma_size = half_sigmas ? 2 : 4, rgb_size = half_rgbs ? 2 : 4;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t begin = in.offsets[r], end = in.offsets[r + 1];
    const float* g_color = io.grad_color + r * 3;
    // Total of the weighted values, from the saved outputs (plus the weights' own gradient).
    float total = io.grad_opacity[r] * io.opacity[r] + io.grad_depth[r] * io.depth[r];
    for (int k = 0; k < 3; ++k) total += g_color[k] * io.color[r * 3 + k];
    if (io.grad_weights != nullptr) {
      __m256 sum = _mm256_setzero_ps();
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) {
        sum = _mm256_fmadd_ps(_mm256_loadu_ps(io.weights + i),
                              _mm256_loadu_ps(io.grad_weights + i), sum);
      }
      for (; i < end; ++i) total += io.weights[i] * io.grad_weights[i];
      total += lane_sum(sum);
    }
    const __m256 g_opacity = _mm256_set1_ps(io.grad_opacity[r]);
    const __m256 half_g_depth = _mm256_set1_ps(io.grad_depth[r] * 0.5f);
    // grad_color in the layout of interleaved rgb: [g0 g1 g2 g0 g1 g2 g0 g1], [g2 g0 ...], ...
    const __m256 g_rgb[3] = {
        _mm256_setr_ps(g_color[0], g_color[1], g_color[2], g_color[0], g_color[1], g_color[2],
                       g_color[0], g_color[1]),
        _mm256_setr_ps(g_color[2], g_color[0], g_color[1], g_color[2], g_color[0], g_color[1],
                       g_color[2], g_color[0]),
        _mm256_setr_ps(g_color[1], g_color[2], g_color[0], g_color[1], g_color[2], g_color[0],
                       g_color[1], g_color[2])};
    const __m256 total_v = _mm256_set1_ps(total);
    __m256 carry = one, prefix = _mm256_setzero_ps();  // sum_{k < block} w_k v_k, every lane
    for (int64_t i = begin; i < end; i += kLanes) {
      const int64_t n = end - i < kLanes ? end - i : kLanes;
      const Block b = n == kLanes ? load.full(i) : load.partial(i, n);
      const Light light = light_of(b, carry, threshold);
      const __m256 w =
          _mm256_and_ps(light.alive, _mm256_mul_ps(light.before, _mm256_sub_ps(one, light.keep)));
      __m256 value = _mm256_fmadd_ps(half_g_depth, _mm256_add_ps(b.t_start, b.t_end), g_opacity);
      value = _mm256_add_ps(value, channel_sum(_mm256_mul_ps(g_rgb[0], b.rgb[0]),
                                               _mm256_mul_ps(g_rgb[1], b.rgb[1]),
                                               _mm256_mul_ps(g_rgb[2], b.rgb[2])));
      if (io.grad_weights != nullptr) {
        __m256 gw;
        if (n == kLanes) {
          gw = _mm256_loadu_ps(io.grad_weights + i);
        } else {
          gw = load_first<false>(io.grad_weights, i, n);
        }
        value = _mm256_add_ps(value, gw);
      }
      prefix = _mm256_add_ps(prefix, sum_scan(_mm256_mul_ps(w, value)));
      const __m256 delta = _mm256_sub_ps(b.t_end, b.t_start);
      const __m256 g_sigma = _mm256_and_ps(
          light.alive,
          _mm256_mul_ps(delta, _mm256_fmsub_ps(light.after, value,
                                               _mm256_sub_ps(total_v, prefix))));
      __m256 g_rgbs[3] = {_mm256_mul_ps(per_channel<0>(w), g_rgb[0]),
                          _mm256_mul_ps(per_channel<1>(w), g_rgb[1]),
                          _mm256_mul_ps(per_channel<2>(w), g_rgb[2])};
      if (light.ends) {  // exact zeros past the threshold (w * g could be -0)
        g_rgbs[0] = _mm256_and_ps(per_channel<0>(light.alive), g_rgbs[0]);
        g_rgbs[1] = _mm256_and_ps(per_channel<1>(light.alive), g_rgbs[1]);
        g_rgbs[2] = _mm256_and_ps(per_channel<2>(light.alive), g_rgbs[2]);
      }
      if (n == kLanes) {
        store8<half_sigmas>(io.grad_sigmas, i, g_sigma);
        for (int k = 0; k < 3; ++k) store8<half_rgbs>(io.grad_rgbs, 3 * i + 8 * k, g_rgbs[k]);
      } else {
        store_first<half_sigmas>(io.grad_sigmas, i, n, g_sigma);
        for (int k = 0; k < 3; ++k) {
          store_first<half_rgbs>(io.grad_rgbs, 3 * i + 8 * k, 3 * n - 8 * k, g_rgbs[k]);
        }
      }
      carry = last_lane(light.after);
      prefix = last_lane(prefix);
      if (light.ends && i + kLanes < end) {  // the rest: zero gradients (all bits 0 in half too)
        const int64_t rest = end - i - kLanes;
        std::memset(static_cast<unsigned char*>(io.grad_sigmas) + (i + kLanes) * sigma_size, 0,
                    rest * sigma_size);
        std::memset(static_cast<unsigned char*>(io.grad_rgbs) + 3 * (i + kLanes) * rgb_size, 0,
                    3 * rest * rgb_size);
        break;
      }
    }
  }
}

}  // namespace

// Calls fn.template operator()<half sigmas, half rgbs>() for the storage of the call's inputs.
template <typename Fn>
void by_storage(const VectorRays& in, Fn&& fn) {
  if (in.half_sigmas) {
    in.half_rgbs ? fn.template operator()<true, true>() : fn.template operator()<true, false>();
  } else {
    in.half_rgbs ? fn.template operator()<false, true>() : fn.template operator()<false, false>();
  }
}

void forward_rays_avx2(const VectorRays& in, const VectorForward& out, int64_t r_begin,
                       int64_t r_end) {
  by_storage(in, [&]<bool HS, bool HR>() { forward_rays<HS, HR>(in, out, r_begin, r_end); });
}

void backward_rays_avx2(const VectorRays& in, const VectorBackward& io, int64_t r_begin,
                        int64_t r_end) {
  by_storage(in, [&]<bool HS, bool HR>() { backward_rays<HS, HR>(in, io, r_begin, r_end); });
}

}  // namespace nerfx::composite

NERFX_AVX2_FUNCTIONS_END

#else  // no AVX2 loops in this build: cpu::use_avx2() is false, so these are never called

namespace nerfx::composite {

void forward_rays_avx2(const VectorRays&, const VectorForward&, int64_t, int64_t) {
  TORCH_CHECK(false, "composite_rays: this build has no AVX2 loops");
}
void backward_rays_avx2(const VectorRays&, const VectorBackward&, int64_t, int64_t) {
  TORCH_CHECK(false, "composite_rays_backward: this build has no AVX2 loops");
}

}  // namespace nerfx::composite

#endif
