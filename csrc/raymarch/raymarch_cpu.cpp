// Ray marching on the CPU: chunks of rays in parallel, each marching once into its own buffer,
// skipping empty 4^3 blocks of cells at once where it can (RayMarcher's blocks: the same samples).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "raymarch/raymarch.h"

namespace nerfx::raymarch {
namespace {

constexpr int kFloatsPerSample = 5;  // t_start, t_end, position x, y, z

// The empty-space skip's blocks (RayMarcher): 4^3 cells each.
constexpr int kBlockShift = 2;

// One bit a block of 2^kBlockShift cells a side (RayMarcher's `blocks`), set where any of its
// cells is occupied; empty where the march cannot use blocks (cone_angle > 0, or a resolution
// that is not a multiple of 4 * 2^kBlockShift). A pass over the bitfield (R^3 / 8 bytes a
// cascade, 8 cells along z a byte), each call: the grid changes between calls.
std::vector<uint8_t> block_bits(const MarchParams& p) {
  const int R = p.grid.resolution;
  if (p.cone_angle > 0.0f || R % (4 << kBlockShift) != 0) return {};
  const int64_t blocks_a_side = R >> kBlockShift, bytes_a_row = R / 8;
  std::vector<uint8_t> blocks(
      size_t((p.grid.cascades * blocks_a_side * blocks_a_side * blocks_a_side + 7) / 8), 0);
  for (int64_t row = 0; row < int64_t(p.grid.cascades) * R * R; ++row) {  // (cascade, x, y)
    const int64_t cascade = row / (int64_t(R) * R), x = row / R % R, y = row % R;
    for (int64_t byte = 0; byte < bytes_a_row; ++byte) {
      const uint8_t cells = p.bitfield[row * bytes_a_row + byte];
      for (int bit = 0; bit < 8; ++bit) {
        if (!((cells >> bit) & 1)) continue;
        const int64_t z = byte * 8 + bit;
        const int64_t block = ((cascade * blocks_a_side + (x >> kBlockShift)) * blocks_a_side +
                               (y >> kBlockShift)) * blocks_a_side + (z >> kBlockShift);
        blocks[size_t(block >> 3)] |= uint8_t(1 << (block & 7));
      }
    }
  }
  return blocks;
}

RayMarcher marcher_of(const Rays& rays, const MarchParams& p, const std::vector<uint8_t>& blocks,
                      int64_t r) {
  return RayMarcher(p.grid, p.bitfield, rays.origins.data_ptr<float>() + r * 3,
                    rays.directions.data_ptr<float>() + r * 3, rays.near.data_ptr<float>()[r],
                    rays.far.data_ptr<float>()[r], rays.jitter.data_ptr<float>()[r], p.step_size,
                    p.cone_angle, blocks.empty() ? nullptr : blocks.data(), kBlockShift);
}

}  // namespace

Marched march_cpu(const Rays& rays, const MarchParams& p, at::Tensor& counts,
                  at::Tensor& resume) {
  const int64_t n = rays.origins.size(0);
  int64_t* count = counts.data_ptr<int64_t>();
  float* resume_at = resume.data_ptr<float>();

  const int64_t rays_per_chunk = 256;
  const int64_t n_chunks = (n + rays_per_chunk - 1) / rays_per_chunk;
  // [samples * kFloatsPerSample] per chunk. Kept (emptied) between calls of the calling thread,
  // so repeated marches reuse their memory instead of faulting in fresh pages every time.
  thread_local std::vector<std::vector<float>> pool;
  std::vector<std::vector<float>>& buffers = pool;  // the caller's pool, for the workers too
  if (int64_t(buffers.size()) < n_chunks) buffers.resize(n_chunks);
  for (int64_t c = 0; c < n_chunks; ++c) buffers[c].clear();
  const std::vector<uint8_t> blocks = block_bits(p);
  at::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      std::vector<float>& buffer = buffers[c];
      for (int64_t r = c * rays_per_chunk; r < std::min(n, (c + 1) * rays_per_chunk); ++r) {
        RayMarcher m = marcher_of(rays, p, blocks, r);
        float sample[kFloatsPerSample];
        int64_t k = 0;
        while (k < p.max_samples && m.next(sample[0], sample[1], sample + 2)) {
          buffer.insert(buffer.end(), sample, sample + kFloatsPerSample);
          ++k;
        }
        count[r] = k;
        resume_at[r] = m.resume_at();
      }
    }
  });

  Marched out = allocate_samples(counts, resume);
  const int64_t* offs = out.offsets.data_ptr<int64_t>();
  float *t_start = out.t_start.data_ptr<float>(), *t_end = out.t_end.data_ptr<float>();
  float* positions = out.positions.data_ptr<float>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      const std::vector<float>& buffer = buffers[c];
      const int64_t first = offs[c * rays_per_chunk];
      for (size_t j = 0; j < buffer.size() / kFloatsPerSample; ++j) {
        const float* sample = buffer.data() + j * kFloatsPerSample;
        t_start[first + j] = sample[0];
        t_end[first + j] = sample[1];
        for (int a = 0; a < 3; ++a) positions[(first + j) * 3 + a] = sample[2 + a];
      }
    }
  });
  return out;
}

}  // namespace nerfx::raymarch
