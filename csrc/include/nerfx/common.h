// Shared definitions for the header-only math used by both the CPU and the CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NERFX_HD __host__ __device__
#else
#define NERFX_HD
#endif

#include <cmath>
#include <cstdint>

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

template <typename T>
NERFX_HD inline T clamp_unit(T v) {
  return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
}

}  // namespace nerfx
