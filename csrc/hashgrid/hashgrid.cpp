// Hash-grid encoding: argument checks, allocation and the device switch, shared by CPU and CUDA.
#include "hashgrid/hashgrid.h"

#include <torch/library.h>

namespace nerfx::hashgrid {

Levels make_levels(const std::vector<int64_t>& offsets, const std::vector<int64_t>& resolutions,
                   int64_t n_dims) {
  const int64_t L = static_cast<int64_t>(resolutions.size());
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, "hash_encode: n_levels must be in [1, ", kMaxLevels,
              "], got ", L);
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == L + 1,
              "hash_encode: offsets must have n_levels + 1 entries");
  TORCH_CHECK(offsets[0] == 0, "hash_encode: offsets[0] must be 0 (the first level starts the "
              "table), got ", offsets[0]);
  Levels levels{};
  levels.n_levels = static_cast<int>(L);
  for (int64_t l = 0; l <= L; ++l) levels.offsets[l] = offsets[l];
  constexpr int64_t kLimit = int64_t(1) << 32;  // rows and resolutions are held as uint32
  for (int64_t l = 0; l < L; ++l) {
    const int64_t rows = offsets[l + 1] - offsets[l];
    TORCH_CHECK(resolutions[l] >= 1 && rows >= 1, "hash_encode: level ", l, " is empty");
    TORCH_CHECK(resolutions[l] < kLimit && rows < kLimit, "hash_encode: level ", l,
                " has ", rows, " rows at resolution ", resolutions[l], "; each must be < 2^32");
    levels.resolutions[l] = static_cast<uint32_t>(resolutions[l]);
    const uint64_t vertices = n_dims == 2 ? vertex_count<2>(levels.resolutions[l])
                                          : vertex_count<3>(levels.resolutions[l]);
    levels.dense[l] = vertices <= static_cast<uint64_t>(rows);
    TORCH_CHECK(levels.dense[l] || (rows & (rows - 1)) == 0,
                "hash_encode: hashed level ", l, " must have a power-of-two row count, got ", rows);
  }
  return levels;
}

namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& params, const Levels& levels, int64_t F) {
  TORCH_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3),
              "hash_encode: x must be [N, 2] or [N, 3], got ", x.sizes());
  TORCH_CHECK(x.device() == params.device(), "hash_encode: x is on ", x.device(),
              " but params is on ", params.device());
  TORCH_CHECK(params.dim() == 1 && params.numel() == levels.offsets[levels.n_levels] * F,
              "hash_encode: params must be 1-D with ", levels.offsets[levels.n_levels] * F,
              " entries, got ", params.sizes());
}

}  // namespace

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& params_in,
                   c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t F) {
  const Levels levels = make_levels(offsets.vec(), resolutions.vec(), x_in.size(-1));
  check_inputs(x_in, params_in, levels, F);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  at::Tensor out = at::empty({x.size(0), levels.n_levels * F}, x.options());
  if (x.size(0) == 0) return out;
#ifdef NERFX_WITH_CUDA
  if (x.is_cuda()) {
    forward_cuda(x, params, levels, F, out);
    return out;
  }
#endif
  forward_cpu(x, params, levels, F, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                            const at::Tensor& params_in, c10::IntArrayRef offsets,
                                            c10::IntArrayRef resolutions, int64_t F,
                                            bool needs_x_grad, bool needs_params_grad) {
  const Levels levels = make_levels(offsets.vec(), resolutions.vec(), x_in.size(-1));
  check_inputs(x_in, params_in, levels, F);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({x.size(0), levels.n_levels * F}) &&
                  grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
              "hash_encode backward: grad_out must be ", x.scalar_type(), " [",
              x.size(0), ", ", levels.n_levels * F, "] on ", x.device(), ", got ",
              grad_out.scalar_type(), " ", grad_out.sizes(), " on ", grad_out.device());
  // Only the gradients asked for are computed (undefined tensors tell the launchers), in one pass.
  // Parameter gradients accumulate in the compute type (float for half parameters), rounded once
  // at the end; the CPU launcher zeroes each level's rows in the thread that fills them.
  const bool cpu_fills = !x.is_cuda() && x.size(0) > 0;
  at::Tensor grad_accum;
  if (needs_params_grad) {
    grad_accum = cpu_fills ? at::empty({params.numel()}, x.options())
                           : at::zeros({params.numel()}, x.options());
  }
  at::Tensor grad_x = needs_x_grad ? at::zeros_like(x) : at::Tensor();
  if (x.size(0) > 0 && (needs_params_grad || needs_x_grad)) {
#ifdef NERFX_WITH_CUDA
    if (x.is_cuda()) {
      backward_cuda(grad_out, x, params, levels, F, grad_accum, grad_x);
    } else
#endif
    {
      backward_cpu(grad_out, x, params, levels, F, grad_accum, grad_x);
    }
  }
  at::Tensor grad_params = needs_params_grad ? grad_accum.to(params.scalar_type())
                                             : at::empty({0}, params.options());
  if (!needs_x_grad) grad_x = at::empty({0}, x.options());
  return {grad_params, grad_x};
}

}  // namespace nerfx::hashgrid
