// Volume compositing on the CPU: one ray per iteration, rays in parallel. Two sets of loops:
// - AVX2 (composite_cpu_avx2.cpp), for float32 positions where cpu::use_avx2() says so and the
//   rays are long enough (see vectorised): eight samples of a ray per step, the survivals
//   computed in the loop, half inputs read as they are;
// - portable (below; float64 always; float32 where AVX2 is missing, rays are short, or
//   NERFX_CPU_PATH=portable):
//   every sample's survival exp(-sigma * delta) first, as one vectorised ATen op, so the per-ray
//   loops (the header's, sequential along the ray) do no exp of their own.
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include "composite/composite.h"
#include "cpu_path.h"

namespace nerfx::composite {
namespace {

// survival() of every sample, [S] in t_start's type: exp(-sigma * (t_end - t_start)), computed
// as exp((t_start - t_end) * sigma), which is the same float, in place in one temporary (half
// sigmas are widened first, as survival() widens them).
at::Tensor survival_of_samples(const Packed& in) {
  at::Tensor survivals = in.t_start - in.t_end;
  survivals.mul_(in.sigmas.to(survivals.scalar_type()));
  return survivals.exp_();
}

// Every ray's range, on the host, before any sample is read or written (the CUDA kernels test
// theirs on the device): one pass over [n_rays + 1] integers.
void check_ray_ranges(const char* op, const Packed& in) {
  const int64_t n_rays = in.offsets.numel() - 1, S = in.sigmas.numel();
  const int64_t* offsets = in.offsets.data_ptr<int64_t>();
  for (int64_t r = 0; r < n_rays; ++r) {
    TORCH_CHECK(valid_ray_range(r, n_rays, offsets, S), op, ": offsets must rise from 0 to S = ",
                S, "; ray ", r, " has [", offsets[r], ", ", offsets[r + 1], ")");
  }
}

// The samples' inputs as the per-ray loops read them: survivals [S], rgbs [S, 3], t_* [S].
template <typename scalar_t, typename color_t>
struct Samples {
  SurvivalFrom<scalar_t> survive;
  const color_t* rgbs;
  const scalar_t *t_start, *t_end;
};

// How both launchers start: every ray's range checked (errors named after op), every sample's
// survival computed, then f(Types<scalar_t, sigma_t, color_t>, Samples<scalar_t, color_t>) with
// the inputs' types.
template <typename F>
void with_samples(const char* op, const Packed& in, F&& f) {
  check_ray_ranges(op, in);
  const at::Tensor survivals = survival_of_samples(in);
  dispatch_types(in, [&]<typename scalar_t, typename sigma_t, typename color_t>(
                         Types<scalar_t, sigma_t, color_t> types) {
    f(types, Samples<scalar_t, color_t>{{survivals.data_ptr<scalar_t>()},
                                        in.rgbs.data_ptr<color_t>(),
                                        in.t_start.data_ptr<scalar_t>(),
                                        in.t_end.data_ptr<scalar_t>()});
  });
}

// The inputs with half densities and colours widened to float by ATen's vectorised conversion
// (F16C where the CPU has it, chosen at run time), so the per-ray loops read float: widening a
// half is exact, so the loops compute the same bits as they do reading half (where this build,
// compiled for baseline x86-64, would convert each value in software).
Packed widened(const Packed& in) {
  Packed wide = in;
  if (in.t_start.scalar_type() == at::kFloat) {
    if (in.sigmas.scalar_type() == at::kHalf) wide.sigmas = in.sigmas.to(at::kFloat);
    if (in.rgbs.scalar_type() == at::kHalf) wide.rgbs = in.rgbs.to(at::kFloat);
  }
  return wide;
}

// A float buffer for a half gradient (its values rounded into it by copy_ afterwards: the same
// round-to-nearest-even as a store of color_t(x)), or the gradient itself.
at::Tensor float_buffer(const at::Tensor& grad) {
  return grad.scalar_type() == at::kHalf ? at::empty(grad.sizes(), grad.options().dtype(at::kFloat))
                                         : grad;
}

// The rays as the AVX2 loops read them (float32 positions; half densities and colours as they are).
VectorRays vector_rays(const Packed& in, double threshold) {
  const bool half_sigmas = in.sigmas.scalar_type() == at::kHalf;
  const bool half_rgbs = in.rgbs.scalar_type() == at::kHalf;
  return {in.offsets.data_ptr<int64_t>(), in.sigmas.data_ptr(), in.rgbs.data_ptr(),
          half_sigmas, half_rgbs, in.t_start.data_ptr<float>(), in.t_end.data_ptr<float>(),
          float(threshold)};
}

// Rays shorter than this on average (samples / rays) take the portable loops under
// NERFX_CPU_PATH=auto: the AVX2 loops' masked last block and per-ray sums cost more than they
// save there (fwd+bwd, 2^18 samples, 1 thread, AVX2 time / portable time: 2.07 at 4 samples a
// ray, 0.95 at 12, 0.83 at 20, 0.67 at 64). Forward and backward see the same sizes, so they take
// the same loops.
constexpr int64_t kMinMeanSamples = 16;

// Whether this call takes the AVX2 loops.
bool vectorised(const Packed& in) {
  if (in.t_start.scalar_type() != at::kFloat || !cpu::use_avx2()) return false;
  const int64_t n_rays = in.offsets.numel() - 1;
  return cpu::avx2_forced() || in.sigmas.numel() >= kMinMeanSamples * n_rays;
}

// Rays per parallel task: a few thousand samples each.
constexpr int64_t kRayGrain = 256;

}  // namespace

void forward_cpu(const Packed& packed, double threshold, Outputs& out) {
  if (vectorised(packed)) {
    check_ray_ranges("composite_rays", packed);
    const VectorRays rays = vector_rays(packed, threshold);
    const VectorForward outputs{out.color.data_ptr<float>(), out.opacity.data_ptr<float>(),
                                out.depth.data_ptr<float>(), out.weights.data_ptr<float>()};
    at::parallel_for(0, packed.offsets.numel() - 1, kRayGrain, [&](int64_t begin, int64_t end) {
      forward_rays_avx2(rays, outputs, begin, end);
    });
    return;
  }
  const Packed in = widened(packed);
  const int64_t n_rays = in.offsets.numel() - 1;
  const int64_t* offsets = in.offsets.data_ptr<int64_t>();
  with_samples("composite_rays", in, [&]<typename scalar_t, typename sigma_t, typename color_t>(
                                         Types<scalar_t, sigma_t, color_t>,
                                         const Samples<scalar_t, color_t>& samples) {
    scalar_t* color = out.color.data_ptr<scalar_t>();
    scalar_t* opacity = out.opacity.data_ptr<scalar_t>();
    scalar_t* depth = out.depth.data_ptr<scalar_t>();
    scalar_t* weights = out.weights.data_ptr<scalar_t>();
    at::parallel_for(0, n_rays, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const RayTotals<scalar_t> ray =
            composite_ray(offsets[r], offsets[r + 1], samples.survive, samples.rgbs,
                          samples.t_start, samples.t_end, scalar_t(threshold), weights);
        store_totals(r, ray, color, opacity, depth);
      }
    });
  });
}

void backward_cpu(const Packed& packed, double threshold, const Outputs& saved,
                  const Outputs& grads, at::Tensor& grad_sigmas_out, at::Tensor& grad_rgbs_out) {
  if (vectorised(packed)) {
    check_ray_ranges("composite_rays_backward", packed);
    const VectorRays rays = vector_rays(packed, threshold);
    const VectorBackward io{
        saved.color.data_ptr<float>(), saved.opacity.data_ptr<float>(),
        saved.depth.data_ptr<float>(), saved.weights.data_ptr<float>(),
        grads.color.data_ptr<float>(), grads.opacity.data_ptr<float>(),
        grads.depth.data_ptr<float>(),
        grads.weights.defined() ? grads.weights.data_ptr<float>() : nullptr,
        grad_sigmas_out.data_ptr(), grad_rgbs_out.data_ptr()};
    at::parallel_for(0, packed.offsets.numel() - 1, kRayGrain, [&](int64_t begin, int64_t end) {
      backward_rays_avx2(rays, io, begin, end);
    });
    return;
  }
  const Packed in = widened(packed);
  at::Tensor grad_sigmas = float_buffer(grad_sigmas_out), grad_rgbs = float_buffer(grad_rgbs_out);
  const int64_t n_rays = in.offsets.numel() - 1;
  const int64_t* offsets = in.offsets.data_ptr<int64_t>();
  with_samples("composite_rays_backward", in,
               [&]<typename scalar_t, typename sigma_t, typename color_t>(
                   Types<scalar_t, sigma_t, color_t>, const Samples<scalar_t, color_t>& samples) {
    const scalar_t* weights = saved.weights.data_ptr<scalar_t>();
    const scalar_t *color = saved.color.data_ptr<scalar_t>(),
                   *opacity = saved.opacity.data_ptr<scalar_t>(),
                   *depth = saved.depth.data_ptr<scalar_t>();
    const scalar_t *g_color = grads.color.data_ptr<scalar_t>(),
                   *g_opacity = grads.opacity.data_ptr<scalar_t>(),
                   *g_depth = grads.depth.data_ptr<scalar_t>();
    const scalar_t* grad_w = grads.weights.defined() ? grads.weights.data_ptr<scalar_t>() : nullptr;
    sigma_t* g_sigmas = grad_sigmas.data_ptr<sigma_t>();
    color_t* g_rgbs = grad_rgbs.data_ptr<color_t>();
    at::parallel_for(0, n_rays, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const RayTotals<scalar_t> totals = load_totals(r, color, opacity, depth);
        const RayTotals<scalar_t> grad = load_totals(r, g_color, g_opacity, g_depth);
        composite_ray_backward(offsets[r], offsets[r + 1], samples.survive, samples.rgbs,
                               samples.t_start, samples.t_end, scalar_t(threshold), weights,
                               totals, grad, grad_w, g_sigmas, g_rgbs);
      }
    });
  });
  if (!grad_sigmas.is_same(grad_sigmas_out)) grad_sigmas_out.copy_(grad_sigmas);
  if (!grad_rgbs.is_same(grad_rgbs_out)) grad_rgbs_out.copy_(grad_rgbs);
}

}  // namespace nerfx::composite
