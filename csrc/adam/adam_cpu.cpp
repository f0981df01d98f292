// Adam step skipping zero-gradient entries, on the CPU: chunks of entries in parallel, each
// in SIMD batches (GCC vectors) with the step sizes and bias corrections read from tables.
//
// Why not the per-entry branch the CUDA kernel takes: on a CPU the arithmetic of a touched entry
// (a sqrt, divisions, two expm1 for the bias corrections) dominates, and CPU training of the
// built-in lego touches most of the 2^17 table's rows at first and fewer once the occupancy grid
// has pruned (benches/RESULTS.md), so a scalar loop ran 6-9x slower than torch's vectorised dense
// Adam. A batch whose gradient is 0 in every lane is skipped after one vector compare: only its
// gradient is read, nothing is written (its cache lines stay clean). A batch with a touched lane
// steps every lane and keeps the old values where the gradient is 0 (a select, bit for bit).
// The bias corrections of each entry's own count come from a table (BiasTable), as expm1 does
// not vectorise, and so does the step size lr / bc1, computed once per count and step (the same
// division, so the same bits). On x86-64 the batch is 16 bytes (SSE2, the build's baseline) or,
// where the CPU has it, 32 bytes (AVX2, chosen at run time); elsewhere entries go one by one.
// Float tables on a CPU with AVX2 or AVX-512 take the line loops of adam_cpu_lines.cpp instead.
// Batches and lone entries do the same IEEE operations (no FMA contraction on x86-64), so an
// entry's result does not depend on the batch width or the number of threads.
#if defined(__GNUC__) && defined(__x86_64__)
// GCC notes that 32-byte vectors change the calling convention without AVX: only inlined here.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>
#include <type_traits>

#include "adam/adam.h"
#include "adam/adam_cpu_lines.h"
#include "adam/adam_simd.h"
#include "cpu_path.h"

#ifdef NERFX_ADAM_SIMD
namespace nerfx {
// The batch of state_t that is Bytes wide, and its counts: int32 lanes of the same width for a
// float batch, none (void) for a double batch, whose lanes are twice as wide as a count.
template <typename state_t, int Bytes>
struct BatchOf {
  static constexpr bool kFloat = std::is_same_v<state_t, float>;
  using type = std::conditional_t<Bytes == 16, std::conditional_t<kFloat, Floats4, Doubles2>,
                                  std::conditional_t<kFloat, Floats8, Doubles4>>;
  using counts = std::conditional_t<kFloat, std::conditional_t<Bytes == 16, Ints4, Ints8>, void>;
};

}  // namespace nerfx
#endif

namespace nerfx::adam {
namespace {

// The table of betas (beta1, beta2), built once per process and state type.
template <typename state_t>
const BiasTable<state_t>& bias_table(double beta1, double beta2) {
  static std::mutex mutex;
  static std::map<std::tuple<double, double>, std::unique_ptr<BiasTable<state_t>>> tables;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[{beta1, beta2}];
  if (!table) table = std::make_unique<BiasTable<state_t>>(beta1, beta2);
  return *table;
}

// The arrays of one tensor's step; n entries each.
template <typename param_t, typename state_t>
struct Arrays {
  param_t* param;
  const param_t* grad;
  state_t* exp_avg;
  state_t* exp_avg_sq;
  int32_t* step;
};

// One entry, as update_entry with the table's bias corrections (the batches' tails).
template <typename param_t, typename state_t>
inline void step_entry(int64_t i, const Arrays<param_t, state_t>& a, const Settings<state_t>& s,
                       const BiasTable<state_t>& table, state_t inv_scale) {
  const state_t g = state_t(a.grad[i]);
  if (g == state_t(0)) return;
  const int32_t t = a.step[i] + 1;
  a.step[i] = t;
  state_t p = state_t(a.param[i]), m = a.exp_avg[i], v = a.exp_avg_sq[i];
  adam_update(g * inv_scale, table.bias1(t), table.bias2_sqrt(t), s, p, m, v);
  a.param[i] = param_t(p);
  a.exp_avg[i] = m;
  a.exp_avg_sq[i] = v;
}

#ifdef NERFX_ADAM_SIMD

// lanes[l] = src[l] in state_t, for one batch (a plain copy when the types agree).
template <typename V, typename state_t, typename T>
inline void load(V& lanes, const T* src) {
  if constexpr (std::is_same_v<T, state_t>) {
    std::memcpy(&lanes, src, sizeof lanes);
  } else {
    for (int l = 0; l < int(sizeof(V) / sizeof(state_t)); ++l) lanes[l] = state_t(src[l]);
  }
}

template <typename V, typename state_t, typename T>
inline void store(T* dst, const V& lanes) {
  if constexpr (std::is_same_v<T, state_t>) {
    std::memcpy(dst, &lanes, sizeof lanes);
  } else {
    for (int l = 0; l < int(sizeof(V) / sizeof(state_t)); ++l) dst[l] = T(lanes[l]);
  }
}

// The per-count tables of one step: step_size[t] = lr / bc1[t] (this step's lr) and
// bc2_sqrt[t], for t in [0, last]; counts past `last` read row `last` (the table is saturated:
// bc1 = bc2_sqrt = 1 there, so the step size is lr).
template <typename state_t>
struct StepTables {
  const state_t* step_size;
  const state_t* bc2_sqrt;
  const state_t* pairs;  // [last + 1, 2]: (step_size[t], bc2_sqrt[t]) side by side
  int32_t last;
};

// Entries [begin, end) in batches of Bytes / sizeof(state_t) lanes, then one by one.
template <int Bytes, typename param_t, typename state_t>
inline void step_batches(int64_t begin, int64_t end, const Arrays<param_t, state_t>& a,
                         const Settings<state_t>& s, const BiasTable<state_t>& table,
                         const StepTables<state_t>& tables, state_t inv_scale) {
  using V = typename BatchOf<state_t, Bytes>::type;
  using Counts = typename BatchOf<state_t, Bytes>::counts;
  constexpr int kLanes = Bytes / int(sizeof(state_t));
  const int32_t last = tables.last;
  const state_t* __restrict__ table_step_size = tables.step_size;
  const state_t* __restrict__ table_bc2_sqrt = tables.bc2_sqrt;
  // Local copies: stores through the arrays (memcpy) could otherwise alias `a`.
  param_t* __restrict__ param = a.param;
  const param_t* __restrict__ grad = a.grad;
  state_t* __restrict__ exp_avg = a.exp_avg;
  state_t* __restrict__ exp_avg_sq = a.exp_avg_sq;
  int32_t* __restrict__ step = a.step;
  // Blocks of kBlock entries in two passes: first the batches with a touched lane are listed,
  // branch-free (the list grows by the compare's verdict); then, where most batches are listed,
  // every batch is stepped in order (the hardware's streams serve it), else only the listed
  // ones, their loads independent of any branch on the gradient and prefetched a few batches
  // ahead. (One pass with a branch per batch mispredicts at the touch rates training has and
  // stalls on every touched batch's cold lines.)
  constexpr int64_t kBlock = 4096;
  int32_t listed[kBlock / kLanes];
  int64_t i = begin;
  while (i + kLanes <= end) {
    const int64_t block_end = i + std::min<int64_t>(kBlock, (end - i) / kLanes * kLanes);
    int n_listed = 0;
    for (int64_t j = i; j < block_end; j += kLanes) {
      V g;
      load<V, state_t>(g, grad + j);
      listed[n_listed] = int32_t(j - i);
      n_listed += any_lane(g != state_t(0));
    }
    // One batch's step: every lane stepped, untouched lanes keeping their bits.
    const auto step_batch = [&](int64_t j) {
      V g, p, m, v, step_size, bc2_sqrt;
      load<V, state_t>(g, grad + j);
      load<V, state_t>(p, param + j);
      load<V, state_t>(m, exp_avg + j);
      load<V, state_t>(v, exp_avg_sq + j);
      const auto touched = g != state_t(0);  // lanes of all ones (-1) where the gradient is not 0
      if constexpr (!std::is_void_v<Counts>) {
        // The counts as a vector register: a lane array in memory stalls store forwarding.
        Counts t;
        std::memcpy(&t, step + j, sizeof t);
        t -= touched;
        std::memcpy(step + j, &t, sizeof t);
        const Counts rows = t < last ? t : last;
        gather_pairs(tables.pairs, rows, step_size, bc2_sqrt);
      } else {
        for (int l = 0; l < kLanes; ++l) {
          const int32_t t = step[j + l] - int32_t(touched[l]);
          step[j + l] = t;
          const int32_t row = t < last ? t : last;
          step_size[l] = table_step_size[row];
          bc2_sqrt[l] = table_bc2_sqrt[row];
        }
      }
      V p_new = p, m_new = m, v_new = v;
      adam_update_by(V(g * inv_scale), step_size, bc2_sqrt, s, p_new, m_new, v_new);
      store<V, state_t>(param + j, touched ? p_new : p);  // untouched lanes keep their bits
      store<V, state_t>(exp_avg + j, touched ? m_new : m);
      store<V, state_t>(exp_avg_sq + j, touched ? v_new : v);
    };
    const int64_t n_batches = (block_end - i) / kLanes;
    if (4 * n_listed >= 3 * n_batches) {
      // Dense: every batch in order (the hardware's streams), the few untouched ones too.
      for (int64_t j = i; j < block_end; j += kLanes) step_batch(j);
    } else {
      constexpr int kAhead = 4;  // batches prefetched ahead
      for (int k = 0; k < n_listed; ++k) {
        if (k + kAhead < n_listed) {
          const int64_t ahead = i + listed[k + kAhead];
          __builtin_prefetch(param + ahead, 1);
          __builtin_prefetch(exp_avg + ahead, 1);
          __builtin_prefetch(exp_avg_sq + ahead, 1);
          __builtin_prefetch(step + ahead, 1);
        }
        step_batch(i + listed[k]);
      }
    }
    i = block_end;
  }
  for (; i < end; ++i) step_entry(i, a, s, table, inv_scale);
}

// The same, compiled for AVX2: flatten inlines every callee (the batch loop, adam_update, the
// AVX sqrt) into this AVX2 function.
template <int Bytes, typename param_t, typename state_t>
__attribute__((target("avx2"), flatten)) void step_batches_avx2(int64_t begin, int64_t end,
                                                        const Arrays<param_t, state_t>& a,
                                                        const Settings<state_t>& s,
                                                        const BiasTable<state_t>& table,
                                                        const StepTables<state_t>& tables,
                                                        state_t inv_scale) {
  step_batches<Bytes>(begin, end, a, s, table, tables, inv_scale);
}

// Float entries [begin, end) through a line loop (adam_cpu_lines.cpp), AVX-512 where `wide`, else
// AVX2, the entries after its whole lines one by one; false (nothing done) for other types.
template <typename param_t, typename state_t>
bool step_lines(bool wide, int64_t begin, int64_t end, const Arrays<param_t, state_t>& a,
                const Settings<state_t>& s, const BiasTable<state_t>& table,
                const StepTables<state_t>& tables, state_t inv_scale) {
  if constexpr (std::is_same_v<param_t, float> && std::is_same_v<state_t, float>) {
    const Line line{a.param, a.grad, a.exp_avg, a.exp_avg_sq, a.step};
    const auto loop = wide ? step_lines_avx512 : step_lines_avx2;
    const int64_t rest = loop(begin, end, line, s, tables.pairs, tables.last, inv_scale);
    for (int64_t i = rest; i < end; ++i) step_entry(i, a, s, table, inv_scale);
    return true;
  } else {
    return false;
  }
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

#endif  // NERFX_ADAM_SIMD

}  // namespace

const char* cpu_loop_name() {
  if (std::strcmp(cpu::path_name(), "avx2") != 0) return cpu::path_name();
#ifdef NERFX_ADAM_SIMD
  if (cpu::avx2_auto() && avx512_available()) return "avx512";
  return has_avx2() ? "avx2" : "portable";
#else
  return "portable";
#endif
}

void step_cpu(const State& state, double lr, double beta1, double beta2, double eps) {
  // A mixed-precision step's scalars live on the host here: read them once.
  if (state.found_inf.defined() && state.found_inf.item<float>() != 0.0f) return;
  const float inv_scale =
      state.grad_scale.defined() ? inverse_scale(state.grad_scale.item<float>()) : 1.0f;
  const int64_t n = state.param.numel();
  constexpr int64_t kChunk = 4096;  // entries per task; a multiple of every batch width
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(state.param.scalar_type(), "adam_step_cpu", [&] {
    using state_t = at::opmath_type<scalar_t>;  // float for float and half, double for double
    const Settings<state_t> s = make_settings<state_t>(lr, beta1, beta2, eps);
    const BiasTable<state_t>& table = bias_table<state_t>(beta1, beta2);
    const state_t inv = state_t(inv_scale);
    const Arrays<scalar_t, state_t> a{
        state.param.data_ptr<scalar_t>(), state.grad.data_ptr<scalar_t>(),
        state.exp_avg.data_ptr<state_t>(), state.exp_avg_sq.data_ptr<state_t>(),
        state.step.data_ptr<int32_t>()};
#ifdef NERFX_ADAM_SIMD
    // This step's step sizes, one per count of the (saturated) table: lr / bc1[t].
    std::vector<state_t> step_size(table.saturated ? table.bc1.size() : 0);
    std::vector<state_t> pairs(2 * step_size.size());
    for (size_t t = 0; t < step_size.size(); ++t) {
      step_size[t] = step_size_of(table.bc1[t], s);
      pairs[2 * t] = step_size[t];
      pairs[2 * t + 1] = table.bc2_sqrt[t];
    }
    const StepTables<state_t> tables{step_size.data(), table.bc2_sqrt.data(), pairs.data(),
                                     int32_t(step_size.size()) - 1};
    // The loops NERFX_CPU_PATH and the CPU allow (read once: a bad value raises here).
    const bool wide = cpu::avx2_auto() && avx512_available();
    const bool avx2 = cpu::use_avx2() && has_avx2();
#endif
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      const int64_t begin = chunk_begin * kChunk, end = std::min(n, chunk_end * kChunk);
#ifdef NERFX_ADAM_SIMD
      if (!table.saturated) {  // betas within ~1e-5 of 1: counts past the table computed
        for (int64_t i = begin; i < end; ++i) step_entry(i, a, s, table, inv);
      } else if ((wide || avx2) && step_lines(wide, begin, end, a, s, table, tables, inv)) {
        // a float table, stepped by a line loop
      } else if (avx2) {
        step_batches_avx2<32>(begin, end, a, s, table, tables, inv);
      } else {
        step_batches<16>(begin, end, a, s, table, tables, inv);
      }
#else
      for (int64_t i = begin; i < end; ++i) step_entry(i, a, s, table, inv);
#endif
    });
  });
}

}  // namespace nerfx::adam
