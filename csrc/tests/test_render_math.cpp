// ctest: the shared ray-marching and compositing math, checked without torch.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "expect.h"

#include "nerfx/composite.h"
#include "nerfx/raymarch.h"

using namespace nerfx;


static void clipping_handles_axis_parallel_and_missing_rays() {
  const float lo[3] = {0, 0, 0}, hi[3] = {1, 1, 1};
  float t0, t1;
  const float o[3] = {-1.0f, 0.5f, 0.5f}, d[3] = {1.0f, 0.0f, 0.0f};
  EXPECT(raymarch::clip_to_box(o, d, lo, hi, t0, t1) && t0 == 1.0f && t1 == 2.0f);
  const float outside[3] = {-1.0f, 2.0f, 0.5f};
  EXPECT(!raymarch::clip_to_box(outside, d, lo, hi, t0, t1));
  const float inside[3] = {0.5f, 0.5f, 0.5f}, up[3] = {0.0f, 0.0f, 2.0f};
  EXPECT(raymarch::clip_to_box(inside, up, lo, hi, t0, t1) && t0 < 0 && t1 == 0.25f);
}

// With every cell occupied the march emits exactly the lattice inside the box.
static void full_grid_marches_the_whole_lattice() {
  const float center[3] = {0.5f, 0.5f, 0.5f}, half[3] = {0.5f, 0.5f, 0.5f};
  const raymarch::GridGeometry g = raymarch::make_grid_geometry(center, half, 8, 1);
  unsigned char bits[64];
  for (unsigned char& b : bits) b = 0xff;
  const float o[3] = {0.5f, 0.5f, -1.0f}, d[3] = {0.0f, 0.0f, 1.0f};
  raymarch::RayMarcher m(g, bits, o, d, 0.0f, 100.0f, 0.0f, 0.1f, 0.0f);
  float ts, te, p[3];
  int n = 0;
  while (m.next(ts, te, p)) {
    EXPECT(std::fabs(ts - (1.0f + 0.1f * n)) < 1e-5f && p[2] >= 0.0f && p[2] <= 1.0f);
    ++n;
  }
  EXPECT(n == 10);
  EXPECT(std::isinf(m.resume_at()));
}

// An empty grid emits nothing, however long the ray.
static void empty_grid_is_skipped() {
  const float center[3] = {0, 0, 0}, half[3] = {1, 1, 1};
  const raymarch::GridGeometry g = raymarch::make_grid_geometry(center, half, 16, 2);
  unsigned char bits[2 * 16 * 16 * 16 / 8] = {0};
  const float o[3] = {-5.0f, 0.1f, 0.2f}, d[3] = {1.0f, 0.01f, 0.0f};
  raymarch::RayMarcher m(g, bits, o, d, 0.0f, 1e9f, 0.0f, 0.001f, 0.0f);
  float ts, te, p[3];
  EXPECT(!m.next(ts, te, p));
}

// Far rays (|t| / step ~ 1e5): the skip over empty cells loses no sample that a dense walk over
// the same lattice, testing every candidate's midpoint, keeps.
static void far_rays_skip_exactly() {
  const float center[3] = {0.0f, 0.0f, 1.0f}, half[3] = {1.0f, 0.5f, 1.0f};
  const int R = 16, cascades = 2;
  const raymarch::GridGeometry g = raymarch::make_grid_geometry(center, half, R, cascades);
  unsigned char bits[cascades * R * R * R / 8];
  unsigned state = 12345u;
  for (unsigned char& b : bits) {
    b = 0;
    for (int i = 0; i < 8; ++i) {
      state = state * 1664525u + 1013904223u;
      b |= ((state >> 24) % 10 < 3 ? 1 : 0) << i;  // 30% of the cells occupied
    }
  }
  const float step = 0.01f;
  int64_t total = 0, missing = 0;
  for (int r = 0; r < 64; ++r) {
    state = state * 1664525u + 1013904223u;
    const float jitter = float(state >> 8) / float(1u << 24);
    float d[3];
    float norm = 0.0f;
    for (int a = 0; a < 3; ++a) {
      state = state * 1664525u + 1013904223u;
      d[a] = float(state >> 8) / float(1u << 23) - 1.0f;
      norm += d[a] * d[a];
    }
    for (float& v : d) v /= std::sqrt(norm);
    float o[3];
    for (int a = 0; a < 3; ++a) o[a] = center[a] + 0.3f * half[a] - 2000.0f * d[a];
    raymarch::RayMarcher m(g, bits, o, d, 0.0f, 1e10f, jitter, step, 0.0f);
    raymarch::RayMarcher dense = m;  // the same t0, t_far and lattice
    float ts, te, p[3];
    for (int64_t k = 0;; ++k) {
      const float start = raymarch::mul_add(float(k) + jitter, step, dense.t0);
      const float mid = raymarch::mul_add(0.5f, step, start);
      if (!(mid < dense.t_far)) break;
      for (int a = 0; a < 3; ++a) p[a] = raymarch::mul_add(mid, d[a], o[a]);
      if (!raymarch::occupied(bits, raymarch::locate(g, p).index)) continue;
      ++total;
      const bool got = m.next(ts, te, p);
      if (!got || ts != start) {
        ++missing;
        break;
      }
    }
    EXPECT(!m.next(ts, te, p));
  }
  EXPECT(total > 1000);
  EXPECT(missing == 0);
}

// Compositing: the backward equals central differences of the forward's colour sum.
// The bit-level helpers locate() uses agree with frexpf and ldexpf.
static void exponents_and_powers_of_two_match_the_library() {
  for (float v : {1.0f, 1.5f, 1.999f, 2.0f, 3.7f, 8.0f, 1000.0f, 0.75f, 1e-30f, 3.4e38f}) {
    int exponent;
    std::frexp(v, &exponent);
    EXPECT(exponent_of(v) == exponent);
  }
  for (int e = -126; e <= 127; ++e) EXPECT(power_of_two(e) == std::ldexp(1.0f, e));
}

// Points on, just inside and outside cell faces and cascade boundaries land where floor says.
static void locate_agrees_with_floor() {
  const float center[3] = {0.5f, 0.5f, 0.5f}, half[3] = {0.5f, 0.5f, 0.5f};
  const raymarch::GridGeometry g = raymarch::make_grid_geometry(center, half, 8, 3);
  for (float x : {-3.5f, -1.5f, -0.5f, -0.01f, 0.0f, 0.125f, 0.1249999f, 0.5f, 0.999f, 1.0f,
                  1.25f, 1.5f, 2.49f, 2.5f, 4.0f}) {
    const float p[3] = {x, 0.5f, 0.3f};
    const raymarch::CellRef ref = raymarch::locate(g, p);
    const float u = (x - 0.5f) * 2.0f;
    const float extent = std::fabs(u) > 0.4f ? std::fabs(u) : 0.4f;
    int exponent = 0;
    if (extent >= 1.0f) std::frexp(extent, &exponent);
    const int cascade = exponent < 2 ? exponent : 2;
    EXPECT(ref.cascade == cascade);
    const float scaled = (u / float(1 << cascade) + 1.0f) * 0.5f * 8.0f;
    const int cell = int(std::fmin(std::fmax(std::floor(scaled), 0.0f), 7.0f));
    EXPECT(ref.cell[0] == cell);
  }
}

static void composite_gradient_matches_finite_differences() {
  double sigmas[4] = {0.5, 2.0, 1.0, 3.0}, rgbs[12], t0[4], t1[4], w[4];
  for (int i = 0; i < 12; ++i) rgbs[i] = (i % 5) / 5.0;
  for (int i = 0; i < 4; ++i) {
    t0[i] = 1.0 + 0.3 * i;
    t1[i] = t0[i] + 0.3;
  }
  const composite::SurvivalOf<double> survive{sigmas, t0, t1};
  const composite::RayTotals<double> totals =
      composite::composite_ray<double>(0, 4, survive, rgbs, t0, t1, 1e-4, w);
  const composite::RayTotals<double> grads{{1.0, 1.0, 1.0}, 0.5, 0.25};
  double g_sigma[4], g_rgb[12];
  composite::composite_ray_backward<double>(0, 4, survive, rgbs, t0, t1, 1e-4, w, totals, grads,
                                            nullptr, g_sigma, g_rgb);
  auto loss = [&](const double* s) {
    double ww[4], kept[4];  // the survivals precomputed, as the CPU launcher does
    for (int j = 0; j < 4; ++j) kept[j] = composite::survival(s[j], t0[j], t1[j]);
    const composite::SurvivalFrom<double> from{kept};
    const auto r = composite::composite_ray<double>(0, 4, from, rgbs, t0, t1, 1e-4, ww);
    return r.color[0] + r.color[1] + r.color[2] + 0.5 * r.opacity + 0.25 * r.depth;
  };
  for (int i = 0; i < 4; ++i) {
    double plus[4], minus[4];
    for (int j = 0; j < 4; ++j) plus[j] = minus[j] = sigmas[j];
    plus[i] += 1e-6;
    minus[i] -= 1e-6;
    EXPECT(std::fabs((loss(plus) - loss(minus)) / 2e-6 - g_sigma[i]) < 1e-6);
  }
}

// CSR ranges: every ray valid exactly when the offsets rise from 0 to n_samples.
static void ray_ranges_are_checked() {
  const auto all_valid = [](std::initializer_list<int64_t> list, int64_t n_samples) {
    const int64_t* offsets = list.begin();
    const int64_t n_rays = int64_t(list.size()) - 1;
    bool valid = true;
    for (int64_t r = 0; r < n_rays; ++r) {
      valid = valid && composite::valid_ray_range(r, n_rays, offsets, n_samples);
    }
    return valid;
  };
  EXPECT(all_valid({0, 2, 2, 5}, 5));
  EXPECT(all_valid({0, 0}, 0));
  EXPECT(!all_valid({0, 4, 3}, 5));   // falling
  EXPECT(!all_valid({0, 3, 6}, 5));   // past n_samples
  EXPECT(!all_valid({1, 2, 5}, 5));   // not from 0
  EXPECT(!all_valid({0, 2, 4}, 5));   // short of n_samples
  EXPECT(!all_valid({0, -1, 5}, 5));  // negative
}

int main() {
  clipping_handles_axis_parallel_and_missing_rays();
  full_grid_marches_the_whole_lattice();
  empty_grid_is_skipped();
  exponents_and_powers_of_two_match_the_library();
  locate_agrees_with_floor();
  far_rays_skip_exactly();
  composite_gradient_matches_finite_differences();
  ray_ranges_are_checked();
  if (failures == 0) std::printf("render math: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
