// Hash-grid encoding on the CPU: loops over the shared math, parallel with at::parallel_for.
// For float32 x and parameters, D = 3 and F = 2 (the training case) the points of a level go 8
// at a time through the AVX2 loops (hashgrid_cpu_avx2.cpp) where cpu::use_avx2() allows (same
// bits); every other case, and NERFX_CPU_PATH=portable, takes the portable loops.
//
// Table reads are random and mostly miss the cache, so points go in batches: locate the cells
// of a batch and prefetch their rows first, then gather (or scatter) once the rows are on their
// way. The memory latencies of a batch then overlap instead of adding up.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_path.h"
#include "hashgrid/hashgrid.h"

namespace nerfx::hashgrid {
namespace {

constexpr int64_t kBatch = 16;  // points whose rows are in flight together

// Points per chunk of the backward: its per-level input gradients ([L, kChunk, D]) and its rows
// of grad_out stay small.
constexpr int64_t kChunk = 4096;

// The most bytes of grad_out the backward copies level-major for the AVX2 loops (2^19 points at
// L = 16, F = 2); beyond it they read grad_out in place.
constexpr int64_t kLevelMajorBytes = int64_t(64) << 20;

// Locates points [i0, i0 + n) at one level into cells[], prefetching every corner's row of the
// table to read (read_table) and of the table to write (write_table), each where not null; of
// the table to write only rows in [write_rows_begin, write_rows_end) (the rows this thread owns:
// a prefetch for writing would pull another thread's lines away from it).
template <int D, int NF, typename scalar_t, typename param_t>
inline void locate_batch(const scalar_t* xs, int64_t i0, int64_t n, const Levels& levels,
                         int level, const param_t* read_table, scalar_t* write_table,
                         Cell<D, scalar_t>* cells, uint32_t write_rows_begin = 0,
                         uint32_t write_rows_end = UINT32_MAX) {
  for (int64_t b = 0; b < n; ++b) {
    locate_cell<D>(xs + (i0 + b) * D, levels, level, cells[b]);
    for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
      const uint32_t row = cells[b].rows[c];
      if (read_table != nullptr) __builtin_prefetch(read_table + int64_t(row) * NF, 0);
      if (write_table != nullptr && row >= write_rows_begin && row < write_rows_end) {
        __builtin_prefetch(write_table + int64_t(row) * NF, 1);
      }
    }
  }
}

// Whether a kernel instantiation has AVX2 loops: float32 x and parameters, D = 3, F = 2.
template <typename scalar_t, typename param_t, int D, int NF>
constexpr bool kHasAvx2Loops = std::is_same_v<scalar_t, float> && std::is_same_v<param_t, float> &&
                               D == 3 && NF == 2;

// Whether this call takes the AVX2 loops (where its instantiation has them): the CPU and
// NERFX_CPU_PATH allow, and every level's rows and resolution fit the loops' int32 lanes.
bool vectorised(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F) {
  if (x.scalar_type() != at::kFloat || params.scalar_type() != at::kFloat || x.size(1) != 3 ||
      F != 2 || !cpu::use_avx2()) {
    return false;
  }
  for (int l = 0; l < levels.n_levels; ++l) {
    if (levels.offsets[l + 1] - levels.offsets[l] > INT32_MAX ||
        levels.resolutions[l] > uint32_t(INT32_MAX)) {
      return false;
    }
  }
  return true;
}

// Asks Linux for 2 MiB pages under a large buffer about to be written for the first time: a
// dense gradient table of T = 2^19 (49 MB) is fresh memory every step, and its 4 KiB page
// faults cost as much as a fifth of the backward. Advice only (ignored where unsupported).
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The parameter gradient alone (no input gradient), in one parallel region. The work is split
// into tasks of one level's rows [begin, end): a task zeroes its rows, then walks every point in
// one pass and adds the contributions of the corners that fall in them, in point order (a task's
// gradient rows, 1 MB for a level of T = 2^17, then see all their adds together; measured
// 1.2-3x faster than walking the points in chunks: benches/RESULTS.md). A row has one owner, so
// there are no atomics and no barrier, and every row sums the same terms in the same order
// whatever the thread count: the same bits as one thread. Levels are split into row ranges only
// where the threads outnumber half the levels (each range then locates every point again).
// Threads claim tasks one at a time, the largest tables first (their rows miss the cache most),
// so a thread that drew cheap levels takes more of them instead of waiting at the end.
template <int D, int NF, typename scalar_t, typename param_t>
void backward_params(const scalar_t* xs, const scalar_t* gout, int64_t n_points,
                     const Levels& levels, scalar_t* gparams, bool avx2) {
  const int L = levels.n_levels;
  const int threads = at::get_num_threads();
  const int parts = std::max(1, (2 * threads + L - 1) / L);
  struct Task {
    int level;
    uint32_t begin, end;  // rows of the level
  };
  std::vector<Task> tasks;
  for (int l = 0; l < L; ++l) {
    const uint32_t rows = uint32_t(levels.offsets[l + 1] - levels.offsets[l]);
    for (int p = 0; p < parts; ++p) {
      tasks.push_back({l, uint32_t(uint64_t(rows) * p / parts),
                       uint32_t(uint64_t(rows) * (p + 1) / parts)});
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return a.end - a.begin > b.end - b.begin;
  });
  // The AVX2 loops read grad_out level by level: read in place ([N, L * 2]), each level's pass
  // would bring every 128-byte line of it through the cache for 8 bytes. Copied level-major
  // ([L, N, 2]) first where that copy is at most kLevelMajorBytes, each pass reads its own
  // contiguous slice (the same values: the same bits).
  std::unique_ptr<scalar_t[]> gout_by_level;
  if constexpr (kHasAvx2Loops<scalar_t, param_t, D, NF>) {
    if (avx2 && n_points * L * NF * int64_t(sizeof(scalar_t)) <= kLevelMajorBytes) {
      gout_by_level.reset(new scalar_t[size_t(n_points) * L * NF]);  // uninitialised
      at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
        points_to_level_major_avx2(gout, L, n_points, begin, end, gout_by_level.get());
      });
    }
  }
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    Cell<D, scalar_t> cells[kBatch];
    for (int64_t k = next_task++; k < int64_t(tasks.size()); k = next_task++) {
      const Task task = tasks[size_t(k)];
      const int l = task.level;
      scalar_t* gtable = gparams + levels.offsets[l] * NF;
      scalar_t* const own_begin = gtable + int64_t(task.begin) * NF;
      scalar_t* const own_end = gtable + int64_t(task.end) * NF;
      std::fill(own_begin, own_end, scalar_t(0));
      if constexpr (kHasAvx2Loops<scalar_t, param_t, D, NF>) {
        if (avx2) {
          if (gout_by_level) {
            backward_params_level_avx2(xs, gout_by_level.get() + int64_t(l) * n_points * NF, NF,
                                       levels, l, 0, n_points, gtable, task.begin, task.end);
          } else {
            backward_params_level_avx2(xs, gout + l * NF, int64_t(L) * NF, levels, l, 0,
                                       n_points, gtable, task.begin, task.end);
          }
          continue;
        }
      }
      const auto add = [own_begin, own_end](scalar_t* row, const scalar_t* values) {
        if (row < own_begin || row >= own_end) return;  // another task's row
        for (int f = 0; f < NF; ++f) row[f] += values[f];
      };
      for (int64_t i0 = 0; i0 < n_points; i0 += kBatch) {
        const int64_t n = std::min(kBatch, n_points - i0);
        locate_batch<D, NF>(xs, i0, n, levels, l, (const param_t*)nullptr, gtable, cells,
                            task.begin, task.end);
        for (int64_t b = 0; b < n; ++b) {
          backward_cell<D, NF>(cells[b], (const param_t*)nullptr, levels.resolutions[l],
                               gout + ((i0 + b) * L + l) * NF, gtable, add, (scalar_t*)nullptr);
        }
      }
    }
  });
}


// The forward on the AVX2 loops, level by level as the portable one; each level's outputs go
// to a level-major buffer ([L, N, 2], written in order) first, then to out in one pass:
// writing a level's 8 bytes straight into each point's row of out ([N, L * 2]) would move
// every line of out through the cache once per level. One parallel region: each thread takes
// the same range of points at every level and then moves those points' rows to out, so no
// thread waits for another between levels.
void forward_avx2(const float* xs, const float* params, const Levels& levels, int64_t n_points,
                  float* outs) {
  const int L = levels.n_levels;
  const std::unique_ptr<float[]> by_level(new float[size_t(L) * n_points * 2]);  // uninitialised
  at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
    for (int l = 0; l < L; ++l) {
      forward_level_avx2(xs, params + levels.offsets[l] * 2, levels, l, begin, end,
                         by_level.get() + int64_t(l) * n_points * 2, 2);
    }
    level_major_to_points_avx2(by_level.get(), L, n_points, begin, end, outs);
  });
}

}  // namespace

void forward_cpu(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                 at::Tensor& out) {
  const int64_t n_points = x.size(0);
  const bool avx2 = vectorised(x, params, levels, F);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&]<typename scalar_t, typename param_t, int D, int NF>(
               Kernel<scalar_t, param_t, D, NF>) {
             const scalar_t* xs = x.data_ptr<scalar_t>();
             const param_t* params_all = params.data_ptr<param_t>();
             scalar_t* outs = out.data_ptr<scalar_t>();
             const int L = levels.n_levels;
             if constexpr (kHasAvx2Loops<scalar_t, param_t, D, NF>) {
               if (avx2) return forward_avx2(xs, params_all, levels, n_points, outs);
             }
             // Level by level, so one level's table stays in cache while every point reads it.
             // One parallel region: each thread its range of points at every level.
             at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
               Cell<D, scalar_t> cells[kBatch];
               for (int l = 0; l < L; ++l) {
                 const param_t* table = params_all + levels.offsets[l] * NF;
                 for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
                   const int64_t n = std::min(kBatch, end - i0);
                   locate_batch<D, NF>(xs, i0, n, levels, l, table, (scalar_t*)nullptr, cells);
                   for (int64_t b = 0; b < n; ++b) {
                     gather_cell<D, NF>(cells[b], table, outs + ((i0 + b) * L + l) * NF);
                   }
                 }
               }
             });
           });
}

// With an input gradient: one pass, each (point, level) cell located once gives both gradients
// (the parameter gradient only where its tensor is defined). Chunk by chunk of points, levels run in parallel: a level owns its
// gradient rows, so its thread scatters without atomics (and zeroes the rows first: grad_params
// arrives uninitialised), and writes its input gradients to its slice of a [L, chunk, D] buffer
// that is then summed over levels in order. Deterministic: no atomics, fixed summation order.
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                  const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x) {
  const int64_t n_points = x.size(0);
  if (!grad_params.defined() && !grad_x.defined()) return;
  const bool avx2 = !grad_x.defined() && vectorised(x, params, levels, F);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&]<typename scalar_t, typename param_t, int D, int NF>(
               Kernel<scalar_t, param_t, D, NF>) {
             const scalar_t* xs = x.data_ptr<scalar_t>();
             const scalar_t* gout = grad_out.data_ptr<scalar_t>();
             const param_t* params_all = params.data_ptr<param_t>();
             const int L = levels.n_levels;
             scalar_t* gparams = grad_params.defined() ? grad_params.data_ptr<scalar_t>() : nullptr;
             scalar_t* gx = grad_x.defined() ? grad_x.data_ptr<scalar_t>() : nullptr;
             if (gparams != nullptr && grad_params.nbytes() >= (size_t(4) << 20)) {
               advise_huge_pages(gparams, grad_params.nbytes());
             }
             if (gx == nullptr) {  // the parameter gradient alone: see backward_params
               backward_params<D, NF, scalar_t, param_t>(xs, gout, n_points, levels, gparams,
                                                         avx2);
               return;
             }
             // [L, kChunk, D]: level l's input gradient of the chunk's points
             std::vector<scalar_t> gx_levels(gx != nullptr ? size_t(L * kChunk * D) : 0);
             const auto add = [](scalar_t* row, const scalar_t* values) {
               for (int f = 0; f < NF; ++f) row[f] += values[f];
             };
             for (int64_t chunk = 0; chunk < n_points; chunk += kChunk) {
               const int64_t chunk_end = std::min(n_points, chunk + kChunk);
               at::parallel_for(0, L, 1, [&](int64_t level_begin, int64_t level_end) {
                 Cell<D, scalar_t> cells[kBatch];
                 for (int l = int(level_begin); l < int(level_end); ++l) {
                   const param_t* table = params_all + levels.offsets[l] * NF;
                   scalar_t* gtable = gparams != nullptr ? gparams + levels.offsets[l] * NF
                                                         : nullptr;
                   scalar_t* gx_level = gx != nullptr ? gx_levels.data() + l * kChunk * D
                                                      : nullptr;
                   if (gtable != nullptr && chunk == 0) {
                     std::fill(gtable, gparams + levels.offsets[l + 1] * NF, scalar_t(0));
                   }
                   if (gx_level != nullptr) {
                     std::fill(gx_level, gx_level + kChunk * D, scalar_t(0));
                   }
                   for (int64_t i0 = chunk; i0 < chunk_end; i0 += kBatch) {
                     const int64_t n = std::min(kBatch, chunk_end - i0);
                     locate_batch<D, NF>(xs, i0, n, levels, l, gx_level ? table : nullptr,
                                         gtable, cells);
                     for (int64_t b = 0; b < n; ++b) {
                       const int64_t i = i0 + b;
                       backward_cell<D, NF>(cells[b], table, levels.resolutions[l],
                                            gout + (i * L + l) * NF, gtable, add,
                                            gx_level ? gx_level + (i - chunk) * D : nullptr);
                     }
                   }
                 }
               });
               if (gx != nullptr) {
                 at::parallel_for(chunk, chunk_end, 1024, [&](int64_t begin, int64_t end) {
                   for (int64_t i = begin; i < end; ++i) {
                     for (int d = 0; d < D; ++d) {
                       scalar_t sum = scalar_t(0);
                       for (int l = 0; l < L; ++l) {
                         sum += gx_levels[(l * kChunk + i - chunk) * D + d];
                       }
                       gx[i * D + d] = sum;
                     }
                   }
                 });
               }
             }
           });
}

}  // namespace nerfx::hashgrid
