// Hash-grid encoding on the CPU: loops over the shared math, parallel with at::parallel_for.
#include <ATen/Parallel.h>

#include <algorithm>

#include "hashgrid/hashgrid.h"

namespace nerfx::hashgrid {

void forward_cpu(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F,
                 at::Tensor& out) {
  const int64_t n_points = x.size(0);
  dispatch(x.scalar_type(), params.scalar_type(), x.size(1), F,
           [&](auto scalar, auto param, auto dims, auto features) {
             using scalar_t = typename decltype(scalar)::type;
             using param_t = typename decltype(param)::type;
             constexpr int D = decltype(dims)::value, NF = decltype(features)::value;
             const scalar_t* xs = x.data_ptr<scalar_t>();
             const param_t* table = params.data_ptr<param_t>();
             scalar_t* outs = out.data_ptr<scalar_t>();
             const int L = levels.n_levels;
             // Level by level, so one level's table stays in cache while every point reads it.
             for (int l = 0; l < L; ++l) {
               at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
                 for (int64_t i = begin; i < end; ++i) {
                   encode_level<D, NF>(xs + i * D, table, levels, l, outs + (i * L + l) * NF);
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
             const param_t* table = params.data_ptr<param_t>();
             const int L = levels.n_levels;
             if (grad_params.defined()) {
               // Levels own disjoint rows, so one thread per level scatters without atomics;
               // it also zeroes those rows (grad_params arrives uninitialised).
               scalar_t* gparams = grad_params.data_ptr<scalar_t>();
               at::parallel_for(0, L, 1, [&](int64_t level_begin, int64_t level_end) {
                 for (int l = int(level_begin); l < int(level_end); ++l) {
                   scalar_t* gtable = gparams + levels.offsets[l] * NF;
                   std::fill(gtable, gparams + levels.offsets[l + 1] * NF, scalar_t(0));
                   for (int64_t i = 0; i < n_points; ++i) {
                     Cell<D, scalar_t> cell;
                     locate_cell<D>(xs + i * D, levels, l, cell);
                     const scalar_t* g = gout + (i * L + l) * NF;
                     for (int c = 0; c < Cell<D, scalar_t>::kCorners; ++c) {
                       scalar_t* row = gtable + int64_t(cell.rows[c]) * NF;
                       for (int f = 0; f < NF; ++f) row[f] += cell.weights[c] * g[f];
                     }
                   }
                 }
               });
             }
             if (grad_x.defined()) {
               scalar_t* gx = grad_x.data_ptr<scalar_t>();
               for (int l = 0; l < L; ++l) {
                 at::parallel_for(0, n_points, 1024, [&](int64_t begin, int64_t end) {
                   for (int64_t i = begin; i < end; ++i) {
                     input_grad_level<D, NF>(xs + i * D, table, levels, l,
                                             gout + (i * L + l) * NF, gx + i * D);
                   }
                 });
               }
             }
           });
}

}  // namespace nerfx::hashgrid
