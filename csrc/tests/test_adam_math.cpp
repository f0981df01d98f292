// ctest: the shared Adam entry update (skip zero gradients, per-entry step counts), without torch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "expect.h"

#include "nerfx/adam.h"

using namespace nerfx;

// Instant-NGP's settings (Muller et al. 2022, sec. 4): lr 1e-2, betas (0.9, 0.99), eps 1e-15.
constexpr double kLr = 1e-2, kBeta1 = 0.9, kBeta2 = 0.99, kEps = 1e-15;

// A zero gradient (either sign) leaves the parameter, both moments and the count bit for bit.
static void zero_gradient_changes_nothing() {
  const adam::Settings<float> s = adam::make_settings<float>(kLr, kBeta1, kBeta2, kEps);
  float param[2] = {0.25f, -0.5f}, grad[2] = {0.0f, -0.0f};
  float m[2] = {0.125f, -1e-3f}, v[2] = {1e-4f, 3e-7f};
  int32_t step[2] = {7, 0};
  const float before[6] = {param[0], param[1], m[0], m[1], v[0], v[1]};
  for (int64_t i = 0; i < 2; ++i) adam::update_entry(i, param, grad, m, v, step, s, 1.0f);
  const float after[6] = {param[0], param[1], m[0], m[1], v[0], v[1]};
  EXPECT(std::memcmp(before, after, sizeof before) == 0);
  EXPECT(step[0] == 7 && step[1] == 0);
}

// Adam's first step of an entry is lr * sign(g) whatever g's size: m_hat = g, v_hat = g^2.
static void first_step_moves_by_the_learning_rate() {
  const adam::Settings<double> s = adam::make_settings<double>(kLr, kBeta1, kBeta2, kEps);
  for (double g : {1e-6, -3.0, 250.0}) {
    double param[1] = {0.5}, grad[1] = {g}, m[1] = {0}, v[1] = {0};
    int32_t step[1] = {0};
    adam::update_entry(0, param, grad, m, v, step, s, 1.0);
    EXPECT(step[0] == 1);
    // |g| / (|g| + eps) differs from 1 by about eps / |g|.
    const double want = 0.5 - kLr * (g > 0 ? 1 : -1);
    EXPECT(std::fabs(param[0] - want) <= kLr * kEps / std::fabs(g) + 1e-15);
  }
}

// A loss-scaled gradient with its inverse scale steps exactly as the unscaled one (GradScaler's
// power-of-two scales; the inverse computed as its unscale_ computes it).
static void loss_scale_is_divided_out_exactly() {
  const adam::Settings<float> s = adam::make_settings<float>(kLr, kBeta1, kBeta2, kEps);
  for (float scale : {65536.0f, 0.5f, 1024.0f}) {
    float p1[1] = {0.3f}, m1[1] = {0.01f}, v1[1] = {1e-4f}, g1[1] = {-0.0123f};
    float p2[1] = {0.3f}, m2[1] = {0.01f}, v2[1] = {1e-4f}, g2[1] = {-0.0123f * scale};
    int32_t t1[1] = {4}, t2[1] = {4};
    adam::update_entry(0, p1, g1, m1, v1, t1, s, 1.0f);
    adam::update_entry(0, p2, g2, m2, v2, t2, s, adam::inverse_scale(scale));
    EXPECT(p1[0] == p2[0] && m1[0] == m2[0] && v1[0] == v2[0] && t1[0] == t2[0]);
  }
  EXPECT(adam::inverse_scale(3.0f) == float(1.0 / 3.0));
}

// An entry skipped at step 2 takes its second step at step 3 with t = 2, by hand in double.
static void bias_correction_counts_the_entrys_own_steps() {
  const adam::Settings<double> s = adam::make_settings<double>(kLr, kBeta1, kBeta2, kEps);
  double param[1] = {0.1}, m[1] = {0}, v[1] = {0};
  int32_t step[1] = {0};
  double want_p = 0.1, want_m = 0, want_v = 0;
  const double grads[3] = {0.3, 0.0, -0.2};
  int t = 0;
  for (double g : grads) {
    double grad[1] = {g};
    adam::update_entry(0, param, grad, m, v, step, s, 1.0);
    if (g == 0) continue;
    ++t;
    want_m = kBeta1 * want_m + (1 - kBeta1) * g;
    want_v = kBeta2 * want_v + (1 - kBeta2) * g * g;
    const double m_hat = want_m / (1 - std::pow(kBeta1, t));
    want_p -= kLr * m_hat / (std::sqrt(want_v) / std::sqrt(1 - std::pow(kBeta2, t)) + kEps);
  }
  EXPECT(step[0] == 2);
  EXPECT(std::fabs(m[0] - want_m) < 1e-15 && std::fabs(v[0] - want_v) < 1e-15);
  EXPECT(std::fabs(param[0] - want_p) < 1e-14);
}

// 1 - beta^t keeps its relative precision in float where it cancels (beta2 = 0.99, t = 1).
static void bias_correction_is_accurate_in_float() {
  const adam::Settings<float> s = adam::make_settings<float>(kLr, kBeta1, kBeta2, kEps);
  for (int32_t t : {1, 2, 10, 1000, 100000}) {
    const double want = 1 - std::pow(kBeta2, t);
    EXPECT(std::fabs(adam::bias_correction(s.log_beta2, t) - want) <= 4e-7 * want);
  }
}

// The CPU launcher's table holds the same bias corrections, to rounding, and saturates at 1.
static void bias_table_matches_the_direct_formula() {
  const adam::BiasTable<float> table(kBeta1, kBeta2);
  EXPECT(table.saturated && table.bc2_sqrt.size() < 2000);  // 0.99^t < 2^-25 from t = 1724 on
  for (int32_t t : {1, 2, 3, 10, 100, 1000, 1700, 5000, 1 << 20}) {
    const double bc1 = 1 - std::pow(kBeta1, t), bc2_sqrt = std::sqrt(1 - std::pow(kBeta2, t));
    EXPECT(std::fabs(table.bias1(t) - bc1) <= 1e-7 * bc1);
    EXPECT(std::fabs(table.bias2_sqrt(t) - bc2_sqrt) <= 1e-7 * bc2_sqrt);
  }
  // beta2 = 0.99999 saturates only after 2^16 counts: the rest are computed directly.
  const adam::BiasTable<float> slow(kBeta1, 0.99999);
  EXPECT(!slow.saturated && slow.bc2_sqrt.size() == size_t(adam::BiasTable<float>::kMaxSize));
  const int32_t t = 100000;
  const double want = std::sqrt(1 - std::pow(0.99999, t));
  EXPECT(std::fabs(slow.bias2_sqrt(t) - want) <= 1e-6 * want);
}

int main() {
  zero_gradient_changes_nothing();
  first_step_moves_by_the_learning_rate();
  bias_correction_counts_the_entrys_own_steps();
  loss_scale_is_divided_out_exactly();
  bias_correction_is_accurate_in_float();
  bias_table_matches_the_direct_formula();
  if (failures == 0) std::printf("adam math: all passed\n");
  return failures == 0 ? 0 : 1;
}
