// Ray marching: checks, the count / scan / fill passes and the device switch.
#include "raymarch/raymarch.h"

namespace nerfx::raymarch {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near,
    const at::Tensor& far, const at::Tensor& jitter, const at::Tensor& bitfield,
    c10::ArrayRef<double> center, c10::ArrayRef<double> half_size, int64_t resolution,
    int64_t cascades, double step_size, double cone_angle, int64_t max_samples) {
  const int64_t n = origins.size(0);
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && directions.sizes() == origins.sizes(),
              "march_rays: rays_o and rays_d must be [N, 3]");
  for (const at::Tensor* t : {&origins, &directions, &near, &far, &jitter}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "march_rays: rays must be float32");
    TORCH_CHECK(t->device() == origins.device(), "march_rays: all tensors must be on one device");
  }
  for (const at::Tensor* t : {&near, &far, &jitter}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "march_rays: near, far, jitter must be [N]");
  }
  TORCH_CHECK(bitfield.scalar_type() == at::kByte && bitfield.device() == origins.device(),
              "march_rays: the bitfield must be uint8 on the rays' device");
  TORCH_CHECK(resolution > 0 && resolution % 2 == 0 && cascades >= 1 && cascades <= 8,
              "march_rays: bad grid resolution or cascade count");
  // The empty-cell skip (RayMarcher::lattice_skip) relies on each coarse cell lying wholly
  // inside or outside the finer cascade, which holds for resolution % 4 == 0.
  TORCH_CHECK(cascades == 1 || resolution % 4 == 0, "march_rays: with ", cascades,
              " cascades the resolution must be a multiple of 4, got ", resolution);
  TORCH_CHECK(bitfield.numel() * 8 == cascades * resolution * resolution * resolution,
              "march_rays: the bitfield must hold cascades * resolution^3 bits");
  TORCH_CHECK(center.size() == 3 && half_size.size() == 3, "march_rays: center, half_size: 3");
  TORCH_CHECK(step_size > 0 && max_samples > 0, "march_rays: step_size, max_samples must be > 0");

  const at::Tensor bits = bitfield.contiguous();
  MarchParams p{};
  const float center_f[3] = {float(center[0]), float(center[1]), float(center[2])};
  const float half_f[3] = {float(half_size[0]), float(half_size[1]), float(half_size[2])};
  p.grid = make_grid_geometry(center_f, half_f, int(resolution), int(cascades));
  p.bitfield = bits.data_ptr<uint8_t>();
  p.step_size = float(step_size);
  p.cone_angle = float(cone_angle);
  p.max_samples = max_samples;
  const Rays rays{origins.contiguous(), directions.contiguous(), near.contiguous(),
                  far.contiguous(), jitter.contiguous()};

  Marched out;
#ifdef NERFX_WITH_CUDA
  if (origins.is_cuda()) {
    out = march_cuda(rays, p);
  } else
#endif
  {
    out = march_cpu(rays, p);
  }
  return {out.offsets, out.t_start, out.t_end, out.positions, out.resume};
}

}  // namespace nerfx::raymarch
