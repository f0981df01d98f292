// The one registration file of nerfx._C: op schemas, CPU and CUDA implementations, build facts.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "adam/adam.h"
#include "composite/composite.h"
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
  info += "}";
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
  m.def("march_rays(Tensor origins, Tensor directions, Tensor near, Tensor far, Tensor jitter, "
        "Tensor bitfield, float[] center, float[] half_size, int resolution, int cascades, "
        "float step_size, float cone_angle, int max_samples) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("adam_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
        "Tensor(d!) step, float lr, float beta1, float beta2, float eps, "
        "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}

// The same implementations serve both devices: each op switches to its CUDA launcher inside.
#define NERFX_IMPLS(m)                                                          \
  m.impl("hash_encode", &nerfx::hashgrid::forward);                            \
  m.impl("hash_encode_backward", &nerfx::hashgrid::backward);                  \
  m.impl("composite_rays", &nerfx::composite::forward);                        \
  m.impl("composite_rays_backward", &nerfx::composite::backward);              \
  m.impl("march_rays", &nerfx::raymarch::march);                               \
  m.impl("adam_step", &nerfx::adam::step)

TORCH_LIBRARY_IMPL(nerfx, CPU, m) { NERFX_IMPLS(m); }

#ifdef NERFX_WITH_CUDA
TORCH_LIBRARY_IMPL(nerfx, CUDA, m) { NERFX_IMPLS(m); }
#endif

// nerfx._C is imported for its side effect: loading it registers the ops above with torch.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
