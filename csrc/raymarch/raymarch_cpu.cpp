// Ray marching on the CPU: one ray per iteration, rays in parallel.
#include <ATen/Parallel.h>

#include "raymarch/raymarch.h"

namespace nerfx::raymarch {
namespace {

RayMarcher marcher_of(const Rays& rays, const MarchParams& p, int64_t r) {
  return RayMarcher(p.grid, p.bitfield, rays.origins.data_ptr<float>() + r * 3,
                    rays.directions.data_ptr<float>() + r * 3, rays.near.data_ptr<float>()[r],
                    rays.far.data_ptr<float>()[r], rays.jitter.data_ptr<float>()[r], p.step_size,
                    p.cone_angle);
}

}  // namespace

void count_cpu(const Rays& rays, const MarchParams& p, at::Tensor& counts, at::Tensor& resume) {
  int64_t* count = counts.data_ptr<int64_t>();
  float* resume_at = resume.data_ptr<float>();
  at::parallel_for(0, counts.numel(), 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      RayMarcher m = marcher_of(rays, p, r);
      count[r] = count_samples(m, p.max_samples);
      resume_at[r] = m.resume_at();
    }
  });
}

void fill_cpu(const Rays& rays, const MarchParams& p, const at::Tensor& offsets,
              at::Tensor& t_start, at::Tensor& t_end, at::Tensor& positions) {
  const int64_t* offs = offsets.data_ptr<int64_t>();
  float *ts = t_start.data_ptr<float>(), *te = t_end.data_ptr<float>();
  float* pos = positions.data_ptr<float>();
  at::parallel_for(0, offsets.numel() - 1, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      RayMarcher m = marcher_of(rays, p, r);
      for (int64_t i = offs[r]; i < offs[r + 1] && m.next(ts[i], te[i], pos + i * 3); ++i) {
      }
    }
  });
}

}  // namespace nerfx::raymarch
