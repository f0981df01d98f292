// ctest: the shared hash-grid math, checked without torch (built by CMakeLists.txt).
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "expect.h"

#include "nerfx/hashgrid.h"

using namespace nerfx::hashgrid;


// One dense level (4 cells, 125 rows) and one hashed level (8 cells, 256 rows).
static Levels two_levels() {
  Levels levels{};
  levels.n_levels = 2;
  levels.offsets[0] = 0;
  levels.offsets[1] = 128;
  levels.offsets[2] = 128 + 256;
  levels.resolutions[0] = 4;
  levels.resolutions[1] = 8;
  levels.dense[0] = true;
  levels.dense[1] = false;
  return levels;
}

static void weights_sum_to_one_and_rows_in_range() {
  const Levels levels = two_levels();
  for (int trial = 0; trial < 1000; ++trial) {
    double x[3];
    for (double& v : x) v = std::rand() / double(RAND_MAX);
    for (int l = 0; l < 2; ++l) {
      Cell<3, double> cell;
      locate_cell<3>(x, levels, l, cell);
      double sum = 0;
      for (int c = 0; c < 8; ++c) {
        sum += cell.weights[c];
        EXPECT(cell.rows[c] < uint32_t(levels.offsets[l + 1] - levels.offsets[l]));
      }
      EXPECT(std::fabs(sum - 1.0) < 1e-12);
    }
  }
}

static void dense_rows_and_hash() {
  const uint32_t v[3] = {1, 2, 3};
  EXPECT(vertex_row<3>(v, 4, 128, true) == 1 + 2 * 5 + 3 * 25);
  const uint32_t expected = (1u * 1u ^ 2u * 2654435761u ^ 3u * 805459861u) & 255u;
  EXPECT(vertex_row<3>(v, 8, 256, false) == expected);
}

static void edges() {
  const Levels levels = two_levels();
  const double one[3] = {1.0, 1.0, 1.0};
  Cell<3, double> cell;
  locate_cell<3>(one, levels, 0, cell);
  EXPECT(cell.frac[0] == 1.0 && cell.weights[7] == 1.0);  // x = 1: the far corner of the last cell
  const double outside[3] = {-0.5, 1.5, 0.5};
  locate_cell<3>(outside, levels, 0, cell);
  EXPECT(!cell.inside[0] && !cell.inside[1] && cell.inside[2]);
}

// One backward pass gives both gradients: the input gradient equals central differences of the
// forward; the parameter gradient g satisfies g . params = grad_out . out (the output is linear
// in the parameters) and, asked for alone, is the same; asked for nothing, nothing is written.
static void backward_matches_finite_differences_and_linearity() {
  const Levels levels = two_levels();
  double params[384 * 2], grad_params[384 * 2] = {0}, alone[384 * 2] = {0};
  for (double& p : params) p = std::rand() / double(RAND_MAX) - 0.5;
  const double x[3] = {0.31, 0.57, 0.83};
  const double grad_out[2] = {0.7, -1.3};
  double grad_x[3] = {0, 0, 0}, untouched[3] = {0, 0, 0};
  const auto add = [](double* row, const double* values) {  // row[f] += values[f], F = 2
    for (int f = 0; f < 2; ++f) row[f] += values[f];
  };
  for (int l = 0; l < 2; ++l) {
    backward_level<3, 2>(x, params, levels, l, grad_out, grad_params, add, grad_x);
    backward_level<3, 2>(x, params, levels, l, grad_out, alone, add, (double*)nullptr);
    backward_level<3, 2>(x, params, levels, l, grad_out, (double*)nullptr, add, untouched);
  }
  for (int d = 0; d < 3; ++d) {
    const double h = 1e-6;
    double xp[3] = {x[0], x[1], x[2]}, xm[3] = {x[0], x[1], x[2]};
    xp[d] += h;
    xm[d] -= h;
    double numeric = 0;
    for (int l = 0; l < 2; ++l) {
      double fp[2], fm[2];
      encode_level<3, 2>(xp, params, levels, l, fp);
      encode_level<3, 2>(xm, params, levels, l, fm);
      for (int f = 0; f < 2; ++f) numeric += grad_out[f] * (fp[f] - fm[f]) / (2 * h);
    }
    EXPECT(std::fabs(numeric - grad_x[d]) < 1e-5 * (1 + std::fabs(numeric)));
    EXPECT(untouched[d] == grad_x[d]);
  }
  double linear = 0, g_dot_p = 0;
  for (int l = 0; l < 2; ++l) {
    double out[2];
    encode_level<3, 2>(x, params, levels, l, out);
    for (int f = 0; f < 2; ++f) linear += grad_out[f] * out[f];
  }
  for (int i = 0; i < 384 * 2; ++i) {
    g_dot_p += grad_params[i] * params[i];
    EXPECT(alone[i] == grad_params[i]);
  }
  EXPECT(std::fabs(linear - g_dot_p) < 1e-12);
}

int main() {
  weights_sum_to_one_and_rows_in_range();
  dense_rows_and_hash();
  edges();
  backward_matches_finite_differences_and_linearity();
  if (failures == 0) std::printf("hashgrid math: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
