// Ray marching: the entry point of both devices, argument checks and allocation; the device's
// launcher (raymarch_cpu.cpp, raymarch_cuda.cu) marches.
#include "raymarch/raymarch.h"

#include <utility>

#include "checks.h"

namespace nerfx::raymarch {

using namespace nerfx::checks;

Marched allocate_samples(const at::Tensor& counts, const at::Tensor& resume) {
  const int64_t n = counts.size(0);
  at::Tensor offsets = at::zeros({n + 1}, counts.options());
  offsets.slice(0, 1).copy_(counts.cumsum(0));
  const int64_t total = offsets[n].item<int64_t>();
  const auto f32 = resume.options();
  return {offsets, at::empty({total}, f32), at::empty({total}, f32), at::empty({total, 3}, f32),
          resume};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    Launcher launch, const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& near,
    const at::Tensor& far, const at::Tensor& jitter, const at::Tensor& bitfield,
    c10::ArrayRef<double> center, c10::ArrayRef<double> half_size, int64_t resolution,
    int64_t cascades, double step_size, double cone_angle, int64_t max_samples) {
  const char* op = "march_rays";
  check_shape(op, "rays_o", rays_o, "[N, 3]", {kAny, 3});
  const int64_t n = rays_o.size(0);
  check_shape(op, "rays_d", rays_d, "[N, 3]", {n, 3});
  for (const auto& [name, t] : {std::pair{"near", &near}, {"far", &far}, {"jitter", &jitter}}) {
    check_shape(op, name, *t, "[N]", {n});
  }
  for (const auto& [name, t] : {std::pair{"rays_o", &rays_o}, {"rays_d", &rays_d},
                                {"near", &near}, {"far", &far}, {"jitter", &jitter}}) {
    check_dtype(op, name, *t, {at::kFloat});
    check_device(op, name, *t, "rays_o", rays_o);
  }
  TORCH_CHECK(resolution > 0 && resolution % 2 == 0, op,
              ": resolution must be even and > 0, got ", resolution);
  TORCH_CHECK(cascades >= 1 && cascades <= 8, op, ": cascades must be in [1, 8], got ", cascades);
  // The empty-cell skip (RayMarcher::lattice_skip) relies on each coarse cell lying wholly
  // inside or outside the finer cascade, which holds for resolution % 4 == 0.
  TORCH_CHECK(cascades == 1 || resolution % 4 == 0, op, ": with ", cascades,
              " cascades the resolution must be a multiple of 4, got ", resolution);
  check_dtype(op, "bitfield", bitfield, {at::kByte});
  check_shape(op, "bitfield", bitfield, "[cascades * resolution^3 / 8]",
              {cascades * resolution * resolution * resolution / 8});
  check_device(op, "bitfield", bitfield, "rays_o", rays_o);
  check_list_size(op, "center", center, 3);
  check_list_size(op, "half_size", half_size, 3);
  TORCH_CHECK(step_size > 0, op, ": step_size must be > 0, got ", step_size);
  TORCH_CHECK(max_samples > 0, op, ": max_samples must be > 0, got ", max_samples);

  const at::Tensor bits = bitfield.contiguous();
  MarchParams p{};
  const float center_f[3] = {float(center[0]), float(center[1]), float(center[2])};
  const float half_f[3] = {float(half_size[0]), float(half_size[1]), float(half_size[2])};
  p.grid = make_grid_geometry(center_f, half_f, int(resolution), int(cascades));
  p.bitfield = bits.data_ptr<uint8_t>();
  p.step_size = float(step_size);
  p.cone_angle = float(cone_angle);
  p.max_samples = max_samples;
  const Rays rays{rays_o.contiguous(), rays_d.contiguous(), near.contiguous(), far.contiguous(),
                  jitter.contiguous()};
  // Per ray: its sample count and where it would resume; every entry written by the launcher.
  at::Tensor counts = at::empty({n}, rays_o.options().dtype(at::kLong));
  at::Tensor resume = at::empty({n}, rays_o.options());
  const Marched out = n > 0 ? launch(rays, p, counts, resume) : allocate_samples(counts, resume);
  return {out.offsets, out.t_start, out.t_end, out.positions, out.resume};
}

}  // namespace nerfx::raymarch
