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
// that is not a multiple of 4 * 2^kBlockShift). Built each call (the grid changes between calls)
// in one pass over the bitfield: the 16 rows of cells along z that make a row of blocks are ORed
// bytewise (vectorised), then each nibble (4 cells along z) gives a block.
std::vector<uint8_t> block_bits(const MarchParams& p) {
  static_assert(kBlockShift == 2, "a block's 4 cells along z are a nibble of the bitfield");
  const int64_t R = p.grid.resolution;
  if (p.cone_angle > 0.0f || R % (4 << kBlockShift) != 0) return {};
  const int64_t side = R >> kBlockShift, row_bytes = R / 8;  // blocks a side; bytes a row of cells
  std::vector<uint8_t> blocks(size_t((p.grid.cascades * side * side * side + 7) / 8), 0);
  std::vector<uint8_t> merged(static_cast<size_t>(row_bytes));
  for (int64_t block_row = 0; block_row < p.grid.cascades * side * side; ++block_row) {
    const int64_t cascade = block_row / (side * side), bx = block_row / side % side,
                  by = block_row % side;
    std::fill(merged.begin(), merged.end(), uint8_t(0));
    for (int64_t x = bx << kBlockShift; x < (bx + 1) << kBlockShift; ++x) {
      for (int64_t y = by << kBlockShift; y < (by + 1) << kBlockShift; ++y) {
        const uint8_t* cells = p.bitfield + ((cascade * R + x) * R + y) * row_bytes;
        for (int64_t b = 0; b < row_bytes; ++b) merged[size_t(b)] |= cells[b];
      }
    }
    for (int64_t bz = 0; bz < side; ++bz) {
      if ((merged[size_t(bz / 2)] >> (4 * (bz % 2))) & 0xF) {
        const int64_t block = block_row * side + bz;
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
