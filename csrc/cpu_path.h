// Which loops the CPU launchers run: the portable ones (any CPU this build targets) or the AVX2
// ones (x86-64 with AVX2, FMA and F16C), chosen at run time on every call.
//
// NERFX_CPU_PATH=portable forces the portable loops (tests run both paths through it; a user
// whose results must match another machine's bit for bit can set it); unset, empty or "auto"
// takes the AVX2 loops where the CPU has them. The AVX2 loops are compiled only for x86-64 with
// GCC or Clang (function-level target attributes, so the rest of the build stays baseline
// x86-64); elsewhere (arm64) the portable loops are the only ones.
#pragma once

// -DNERFX_CPU_AVX2_BUILT=0 builds the portable loops alone (as on arm64) anywhere.
#ifndef NERFX_CPU_AVX2_BUILT
#if (defined(__x86_64__) || defined(__amd64__)) && (defined(__GNUC__) || defined(__clang__))
#define NERFX_CPU_AVX2_BUILT 1
#else
#define NERFX_CPU_AVX2_BUILT 0
#endif
#endif

namespace nerfx::cpu {

// Whether the CPU running this process has AVX2, FMA and F16C and this build has the loops.
bool avx2_available();

// Whether the launchers take the AVX2 loops now: available and not forced off by
// NERFX_CPU_PATH (read on every call; any value but "", "auto" or "portable" raises).
bool use_avx2();

// "avx2" or "portable": what use_avx2() chooses now, for build_info and the tests (a line
// saying what is wrong where NERFX_CPU_PATH has a value use_avx2() refuses).
const char* path_name();

}  // namespace nerfx::cpu
