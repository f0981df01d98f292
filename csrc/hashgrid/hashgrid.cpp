// Hash-grid encoding: the entry points of both devices, argument checks and allocation; the
// device's launcher (hashgrid_cpu.cpp, hashgrid_cuda.cu) runs the loops.
#include "hashgrid/hashgrid.h"

#include "checks.h"

namespace nerfx::hashgrid {

using namespace nerfx::checks;

Levels make_levels(c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t n_dims) {
  const int64_t L = static_cast<int64_t>(resolutions.size());
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, "hash_encode: resolutions must have 1 to ", kMaxLevels,
              " entries (one per level), got ", L);
  check_list_size("hash_encode", "offsets", offsets, L + 1, "n_levels + 1");
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

// x [N, 2 or 3] float or double, params [n_rows * F] of a type that goes with x's, one device;
// -> the levels the lists describe.
Levels checked(const char* op, const at::Tensor& x, const at::Tensor& params,
               c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t F) {
  TORCH_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), op,
              ": x must be [N, 2] or [N, 3], got ", x.sizes());
  check_dtype(op, "x", x, {at::kFloat, at::kDouble});
  check_device(op, "params", params, "x", x);
  if (x.scalar_type() == at::kFloat) {
    check_dtype(op, "params", params, {at::kFloat, at::kHalf}, " for torch.float32 x");
  } else {
    check_dtype(op, "params", params, {at::kDouble}, " for torch.float64 x");
  }
  TORCH_CHECK(F == 1 || F == 2 || F == 4 || F == 8, op,
              ": n_features must be 1, 2, 4 or 8, got ", F);
  const Levels levels = make_levels(offsets, resolutions, x.size(1));
  check_shape(op, "params", params, "[n_params]", {levels.offsets[levels.n_levels] * F});
  return levels;
}

}  // namespace

at::Tensor forward(ForwardLauncher launch, const at::Tensor& x_in, const at::Tensor& params_in,
                   c10::IntArrayRef offsets, c10::IntArrayRef resolutions, int64_t F) {
  const Levels levels = checked("hash_encode", x_in, params_in, offsets, resolutions, F);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  at::Tensor out = at::empty({x.size(0), levels.n_levels * F}, x.options());
  if (x.size(0) > 0) launch(x, params, levels, F, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(BackwardLauncher launch, const at::Tensor& grad_out_in,
                                            const at::Tensor& x_in, const at::Tensor& params_in,
                                            c10::IntArrayRef offsets, c10::IntArrayRef resolutions,
                                            int64_t F, bool needs_x_grad, bool needs_params_grad) {
  const char* op = "hash_encode_backward";
  const Levels levels = checked(op, x_in, params_in, offsets, resolutions, F);
  const int64_t n = x_in.size(0);
  check_shape(op, "grad_out", grad_out_in, "[N, L * F]", {n, levels.n_levels * F});
  check_dtype(op, "grad_out", grad_out_in, {x_in.scalar_type()}, " like x");
  check_device(op, "grad_out", grad_out_in, "x", x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor params = params_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  // Only the gradients asked for are computed (undefined tensors tell the launchers), in one pass.
  // Parameter gradients accumulate in the compute type (float for half parameters), rounded once
  // at the end. The launcher zeroes the table (the CPU one each level's rows in the thread that
  // fills them); with no points it is not called, and the table is zero from the start.
  at::Tensor grad_accum;
  if (needs_params_grad) {
    grad_accum = n > 0 ? at::empty({params.numel()}, x.options())
                       : at::zeros({params.numel()}, x.options());
  }
  at::Tensor grad_x = needs_x_grad ? at::zeros_like(x) : at::Tensor();
  if (n > 0 && (needs_params_grad || needs_x_grad)) {
    launch(grad_out, x, params, levels, F, grad_accum, grad_x);
  }
  at::Tensor grad_params = needs_params_grad ? grad_accum.to(params.scalar_type())
                                             : at::empty({0}, params.options());
  if (!needs_x_grad) grad_x = at::empty({0}, x.options());
  return {grad_params, grad_x};
}

}  // namespace nerfx::hashgrid
