// Which loops the CPU launchers run: the portable ones (any CPU this build targets) or the AVX2
// ones (x86-64 with AVX2, FMA and F16C), chosen at run time on every call.
//
// NERFX_CPU_PATH: unset, empty or "auto" lets each launcher take its AVX2 loops where the CPU
// has them and where they pay (compositing: rays of 16 samples or more on average; for shorter
// rays its portable loops are faster; the hash grid: float32 x and tables, D = 3, F = 2, always,
// with the portable loops' bits); "avx2" takes them on every call the CPU allows (tests run
// both loops through it); "portable" never (a user whose results must match another machine's
// bit for bit can set it). The AVX2 loops are compiled only for x86-64 with GCC or Clang
// (function-level target attributes, so the rest of the build stays baseline x86-64); elsewhere
// (arm64) the portable loops are the only ones.
#pragma once

// -DNERFX_CPU_AVX2_BUILT=0 builds the portable loops alone (as on arm64) anywhere.
#ifndef NERFX_CPU_AVX2_BUILT
#if (defined(__x86_64__) || defined(__amd64__)) && (defined(__GNUC__) || defined(__clang__))
#define NERFX_CPU_AVX2_BUILT 1
#else
#define NERFX_CPU_AVX2_BUILT 0
#endif
#endif

// Between NERFX_AVX2_FUNCTIONS_BEGIN and NERFX_AVX2_FUNCTIONS_END, every function is compiled
// for AVX2, FMA and F16C (function-level target attributes; the rest of the build stays
// baseline x86-64). The loops there are called only where cpu::use_avx2() says the CPU has
// them. Nothing inline from another header may be instantiated between the two (only the
// compiler's intrinsics), so no AVX2 copy of a shared inline function can reach the portable
// code through the linker.
#if defined(__clang__)
#define NERFX_AVX2_FUNCTIONS_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define NERFX_AVX2_FUNCTIONS_END _Pragma("clang attribute pop")
#else
#define NERFX_AVX2_FUNCTIONS_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define NERFX_AVX2_FUNCTIONS_END _Pragma("GCC pop_options")
#endif

namespace nerfx::cpu {

// Whether the CPU running this process has AVX2, FMA and F16C and this build has the loops.
bool avx2_available();

// Whether the launchers may take the AVX2 loops now: available and not forced off by
// NERFX_CPU_PATH (read on every call; a value other than "", "auto", "avx2" or "portable"
// raises).
bool use_avx2();

// Whether NERFX_CPU_PATH leaves the choice to the launchers (unset, empty or "auto") and the CPU
// has the AVX2 loops: where a launcher also has wider loops (Adam's AVX-512 one), it takes them
// only then ("avx2" asks for the AVX2 loops themselves).
bool avx2_auto();

// Whether NERFX_CPU_PATH=avx2 asks for the AVX2 loops whatever the launcher would prefer (and the
// CPU has them).
bool avx2_forced();

// "avx2" or "portable": what use_avx2() allows now, for build_info and the tests (a line
// saying what is wrong where NERFX_CPU_PATH has a value use_avx2() refuses).
const char* path_name();

}  // namespace nerfx::cpu
