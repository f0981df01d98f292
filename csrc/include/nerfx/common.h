// Shared definitions for the header-only math used by both the CPU and the CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NERFX_HD __host__ __device__
#else
#define NERFX_HD
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace nerfx {

// One-argument math on either device: the CUDA device function on the GPU (::f), the standard
// library's on the host (std::f), for float and double alike.
#ifdef __CUDA_ARCH__
#define NERFX_MATH_FN(f) ::f
#else
#define NERFX_MATH_FN(f) std::f
#endif
#define NERFX_DEFINE_MATH(name, f) \
  template <typename T>            \
  NERFX_HD inline T name(T v) {    \
    return NERFX_MATH_FN(f)(v);    \
  }

NERFX_DEFINE_MATH(floor_of, floor)
NERFX_DEFINE_MATH(exp_of, exp)
NERFX_DEFINE_MATH(expm1_of, expm1)
NERFX_DEFINE_MATH(sqrt_of, sqrt)

// min and max that compile to one instruction on the CPU (std::fmin/fmax are library calls
// there, for their NaN rules); CUDA's fminf/fmaxf are single instructions already. For inputs
// that are not NaN the results are the same.
#ifdef __CUDA_ARCH__
#define NERFX_DEFINE_MIN_MAX(name, cuda_f, less) \
  NERFX_HD inline float name(float a, float b) { return cuda_f(a, b); }
#else
#define NERFX_DEFINE_MIN_MAX(name, cuda_f, less) \
  NERFX_HD inline float name(float a, float b) { return a less b ? a : b; }
#endif

NERFX_DEFINE_MIN_MAX(min_of, fminf, <)
NERFX_DEFINE_MIN_MAX(max_of, fmaxf, >)

#undef NERFX_DEFINE_MIN_MAX
#undef NERFX_DEFINE_MATH
#undef NERFX_MATH_FN

// The exponent e of a positive finite v = f * 2^e with f in [0.5, 1), as frexpf gives it, read
// from the bits (v must be normal: not zero, not subnormal).
NERFX_HD inline int exponent_of(float v) {
#ifdef __CUDA_ARCH__
  const uint32_t bits = __float_as_uint(v);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
#endif
  return int((bits >> 23) & 0xffu) - 126;
}

// 2^e as a float, exactly, for -126 <= e <= 127.
NERFX_HD inline float power_of_two(int e) {
  const uint32_t bits = uint32_t(e + 127) << 23;
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

template <typename T>
NERFX_HD inline T clamp_unit(T v) {
  return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
}

}  // namespace nerfx
