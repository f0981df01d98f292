// Hash-grid encoding on the CPU: loops over the shared math, parallel with at::parallel_for.
//
// Table reads are random and mostly miss the cache, so points go in batches: locate the cells
// of a batch and prefetch their rows first, then gather (or scatter) once the rows are on their
// way. The memory latencies of a batch then overlap instead of adding up.
#include <ATen/Parallel.h>

#include <algorithm>

#include "hashgrid/hashgrid.h"

namespace nerfx::hashgrid {
namespace {

constexpr int64_t kBatch = 16;  // points whose rows are in flight together

// Locates points [i0, i0 + n) at one level into cells[], prefetching every corner's row.
template <int D, int NF, typename scalar_t, typename row_t>
inline void locate_batch(const scalar_t* xs, int64_t i0, int64_t n, const Levels& levels,
                         int level, const row_t* table, bool for_write,
                         Cell<D, scalar_t>* cells) {
  for (int64_t b = 0; b < n; ++b) {
    locate_cell<D>(xs + (i0 + b) * D, levels, level, cells[b]);
    for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
      const row_t* row = table + int64_t(cells[b].rows[c]) * NF;
      if (for_write) {
        __builtin_prefetch(row, 1);
      } else {
        __builtin_prefetch(row, 0);
      }
    }
  }
}

}  // namespace

void forward_cpu(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                 at::Tensor& out) {
  const int64_t n_points = x.size(0);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&](auto scalar, auto param, auto dims, auto features) {
             using scalar_t = typename decltype(scalar)::type;
             using param_t = typename decltype(param)::type;
             constexpr int D = decltype(dims)::value, NF = decltype(features)::value;
             const scalar_t* xs = x.data_ptr<scalar_t>();
             const param_t* params_all = params.data_ptr<param_t>();
             scalar_t* outs = out.data_ptr<scalar_t>();
             const int L = levels.n_levels;
             // Level by level, so one level's table stays in cache while every point reads it.
             for (int l = 0; l < L; ++l) {
               const param_t* table = params_all + levels.offsets[l] * NF;
               at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
                 Cell<D, scalar_t> cells[kBatch];
                 for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
                   const int64_t n = std::min(kBatch, end - i0);
                   locate_batch<D, NF>(xs, i0, n, levels, l, table, false, cells);
                   for (int64_t b = 0; b < n; ++b) {
                     gather_cell<D, NF>(cells[b], table, outs + ((i0 + b) * L + l) * NF);
                   }
                 }
               });
             }
           });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
                  const Levels& levels, int64_t F, at::Tensor& grad_params, at::Tensor& grad_x) {
  const int64_t n_points = x.size(0);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&](auto scalar, auto param, auto dims, auto features) {
             using scalar_t = typename decltype(scalar)::type;
             using param_t = typename decltype(param)::type;
             constexpr int D = decltype(dims)::value, NF = decltype(features)::value;
             const scalar_t* xs = x.data_ptr<scalar_t>();
             const scalar_t* gout = grad_out.data_ptr<scalar_t>();
             const param_t* params_all = params.data_ptr<param_t>();
             const int L = levels.n_levels;
             if (grad_params.defined()) {
               // Levels own disjoint rows, so one thread per level scatters without atomics;
               // it also zeroes those rows (grad_params arrives uninitialised).
               scalar_t* gparams = grad_params.data_ptr<scalar_t>();
               const auto add = [](scalar_t* to, scalar_t value) { *to += value; };
               at::parallel_for(0, L, 1, [&](int64_t level_begin, int64_t level_end) {
                 Cell<D, scalar_t> cells[kBatch];
                 for (int l = int(level_begin); l < int(level_end); ++l) {
                   scalar_t* gtable = gparams + levels.offsets[l] * NF;
                   std::fill(gtable, gparams + levels.offsets[l + 1] * NF, scalar_t(0));
                   for (int64_t i0 = 0; i0 < n_points; i0 += kBatch) {
                     const int64_t n = std::min(kBatch, n_points - i0);
                     locate_batch<D, NF>(xs, i0, n, levels, l, gtable, true, cells);
                     for (int64_t b = 0; b < n; ++b) {
                       scatter_cell<D, NF>(cells[b], gout + ((i0 + b) * L + l) * NF, gtable,
                                           add);
                     }
                   }
                 }
               });
             }
             if (grad_x.defined()) {
               scalar_t* gx = grad_x.data_ptr<scalar_t>();
               for (int l = 0; l < L; ++l) {
                 const param_t* table = params_all + levels.offsets[l] * NF;
                 at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
                   Cell<D, scalar_t> cells[kBatch];
                   for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
                     const int64_t n = std::min(kBatch, end - i0);
                     locate_batch<D, NF>(xs, i0, n, levels, l, table, false, cells);
                     for (int64_t b = 0; b < n; ++b) {
                       const int64_t i = i0 + b;
                       input_grad_cell<D, NF>(cells[b], table, levels.resolutions[l],
                                              gout + (i * L + l) * NF, gx + i * D);
                     }
                   }
                 });
               }
             }
           });
}

}  // namespace nerfx::hashgrid
