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
  TORCH_CHECK(bitfield.numel() * 8 == cascades * resolution * resolution * resolution,
              "march_rays: the bitfield must hold cascades * resolution^3 bits");
  TORCH_CHECK(center.size() == 3 && half_size.size() == 3, "march_rays: center, half_size: 3");
  TORCH_CHECK(step_size > 0 && max_samples > 0, "march_rays: step_size, max_samples must be > 0");

  const at::Tensor bits = bitfield.contiguous();
  MarchParams p{};
  for (int a = 0; a < 3; ++a) {
    p.grid.center[a] = float(center[a]);
    p.grid.half_size[a] = float(half_size[a]);
  }
  p.grid.resolution = int(resolution);
  p.grid.cascades = int(cascades);
  p.bitfield = bits.data_ptr<uint8_t>();
  p.step_size = float(step_size);
  p.cone_angle = float(cone_angle);
  p.max_samples = max_samples;
  const Rays rays{origins.contiguous(), directions.contiguous(), near.contiguous(),
                  far.contiguous(), jitter.contiguous()};

  const auto f32 = origins.options();
  at::Tensor counts = at::zeros({n}, f32.dtype(at::kLong));
  at::Tensor resume = at::empty({n}, f32);
  at::Tensor offsets = at::zeros({n + 1}, f32.dtype(at::kLong));
  if (n > 0) {
#ifdef NERFX_WITH_CUDA
    if (origins.is_cuda()) count_cuda(rays, p, counts, resume);
    else
#endif
      count_cpu(rays, p, counts, resume);
    offsets.slice(0, 1).copy_(counts.cumsum(0));
  }
  const int64_t total = offsets[n].item<int64_t>();
  at::Tensor t_start = at::empty({total}, f32);
  at::Tensor t_end = at::empty({total}, f32);
  at::Tensor positions = at::empty({total, 3}, f32);
  if (total > 0) {
#ifdef NERFX_WITH_CUDA
    if (origins.is_cuda()) fill_cuda(rays, p, offsets, t_start, t_end, positions);
    else
#endif
      fill_cpu(rays, p, offsets, t_start, t_end, positions);
  }
  return {offsets, t_start, t_end, positions, resume};
}

}  // namespace nerfx::raymarch
