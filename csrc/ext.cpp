// The one registration file of nerfx._C: op schemas, their CPU and CUDA kernels, build facts.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "adam/adam.h"
#include "composite/composite.h"
#include "cpu_path.h"
#include "hashgrid/hashgrid.h"
#include "raymarch/raymarch.h"

#ifndef NERFX_CUDA_ARCHS
#define NERFX_CUDA_ARCHS ""
#endif

namespace {

// What this build holds, as JSON, for `python -m nerfx.info`.
std::string build_info() {
  std::string info = "{\"cuda\": ";
#ifdef NERFX_WITH_CUDA
  info += "true";
#else
  info += "false";
#endif
  info += ", \"cuda_archs\": \"" NERFX_CUDA_ARCHS "\", \"openmp\": ";
#ifdef _OPENMP
  info += "true";
#else
  info += "false";
#endif
  // The CPU loops the launchers take now (NERFX_CPU_PATH, the CPU's features): cpu_path.h.
  info += ", \"cpu_path\": \"";
  info += nerfx::cpu::path_name();
  info += "\", \"adam_cpu_loop\": \"";  // Adam's float loop, which may be wider (adam.h)
  info += nerfx::adam::cpu_loop_name();
  info += "\"}";
  return info;
}

}  // namespace

TORCH_LIBRARY(nerfx, m) {
  m.def("build_info() -> str", &build_info);
  m.def("hash_encode(Tensor x, Tensor params, int[] offsets, int[] resolutions, int n_features) "
        "-> Tensor");
  m.def("hash_encode_backward(Tensor grad_out, Tensor x, Tensor params, int[] offsets, "
        "int[] resolutions, int n_features, bool needs_x_grad, bool needs_params_grad) "
        "-> (Tensor, Tensor)");
  m.def("composite_rays(Tensor sigmas, Tensor rgbs, Tensor t_start, Tensor t_end, "
        "Tensor offsets, float threshold) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("composite_rays_backward(Tensor grad_color, Tensor grad_opacity, Tensor grad_depth, "
        "Tensor grad_weights, Tensor sigmas, Tensor rgbs, Tensor t_start, Tensor t_end, "
        "Tensor offsets, Tensor color, Tensor opacity, Tensor depth, Tensor weights, "
        "float threshold) -> (Tensor, Tensor)");
  m.def("march_rays(Tensor rays_o, Tensor rays_d, Tensor near, Tensor far, Tensor jitter, "
        "Tensor bitfield, float[] center, float[] half_size, int resolution, int cascades, "
        "float step_size, float cone_angle, int max_samples) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("adam_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
        "Tensor(d!) step, float lr, float beta1, float beta2, float eps, "
        "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}

// Each op has one entry point (<op>/<op>.cpp: checks and allocation) whose first parameter is a
// launcher (the loops of one device: <op>_cpu.cpp, <op>_cuda.cu). kernel<&entry, &launcher> is
// the entry point with that launcher bound: a function of the op's schema, which torch checks
// against the schema above and calls for tensors of the key it is registered under.
namespace {

template <auto entry, auto launcher>
struct Kernel;
template <typename Result, typename Launcher, typename... Args, Result (*entry)(Launcher, Args...),
          Launcher launcher>
struct Kernel<entry, launcher> {
  static Result call(Args... args) { return entry(launcher, args...); }
};

template <auto entry, auto launcher>
constexpr auto kernel = &Kernel<entry, launcher>::call;

}  // namespace

TORCH_LIBRARY_IMPL(nerfx, CPU, m) {
  using namespace nerfx;
  m.impl("hash_encode", kernel<&hashgrid::forward, &hashgrid::forward_cpu>);
  m.impl("hash_encode_backward", kernel<&hashgrid::backward, &hashgrid::backward_cpu>);
  m.impl("composite_rays", kernel<&composite::forward, &composite::forward_cpu>);
  m.impl("composite_rays_backward", kernel<&composite::backward, &composite::backward_cpu>);
  m.impl("march_rays", kernel<&raymarch::march, &raymarch::march_cpu>);
  m.impl("adam_step", kernel<&adam::step, &adam::step_cpu>);
}

#ifdef NERFX_WITH_CUDA
TORCH_LIBRARY_IMPL(nerfx, CUDA, m) {
  using namespace nerfx;
  m.impl("hash_encode", kernel<&hashgrid::forward, &hashgrid::forward_cuda>);
  m.impl("hash_encode_backward", kernel<&hashgrid::backward, &hashgrid::backward_cuda>);
  m.impl("composite_rays", kernel<&composite::forward, &composite::forward_cuda>);
  m.impl("composite_rays_backward", kernel<&composite::backward, &composite::backward_cuda>);
  m.impl("march_rays", kernel<&raymarch::march, &raymarch::march_cuda>);
  m.impl("adam_step", kernel<&adam::step, &adam::step_cuda>);
}
#endif

// nerfx._C is imported for its side effect: loading it registers the ops above with torch.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
