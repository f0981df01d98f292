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

template <typename T>
NERFX_HD inline T floor_of(T v) {
#ifdef __CUDA_ARCH__
  return ::floor(v);
#else
  return std::floor(v);
#endif
}

template <typename T>
NERFX_HD inline T exp_of(T v) {
#ifdef __CUDA_ARCH__
  return ::exp(v);
#else
  return std::exp(v);
#endif
}

template <typename T>
NERFX_HD inline T expm1_of(T v) {
#ifdef __CUDA_ARCH__
  return ::expm1(v);
#else
  return std::expm1(v);
#endif
}

template <typename T>
NERFX_HD inline T sqrt_of(T v) {
#ifdef __CUDA_ARCH__
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// min and max that compile to one instruction on the CPU (std::fmin/fmax are library calls
// there, for their NaN rules); CUDA's fminf/fmaxf are single instructions already. For inputs
// that are not NaN the results are the same.
NERFX_HD inline float min_of(float a, float b) {
#ifdef __CUDA_ARCH__
  return fminf(a, b);
#else
  return a < b ? a : b;
#endif
}

NERFX_HD inline float max_of(float a, float b) {
#ifdef __CUDA_ARCH__
  return fmaxf(a, b);
#else
  return a > b ? a : b;
#endif
}

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
