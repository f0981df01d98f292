// Argument checks of the ops' entry points (csrc/<op>/<op>.cpp), shared by the four ops.
//
// Each check raises (RuntimeError in Python) with one sentence naming the op and the argument:
//   "<op>: <name> must be <what>, got <what>"        shapes, dtypes, list lengths, contiguity
//   "<op>: <name> is on <device> but <ref> is on <device>"
// dtypes are written as Python writes them (torch.float32), shapes as lists ([N, 3] = [5, 3]),
// so the checks the public functions make in Python (nerfx/ops/_checks.py) say the same things in
// the same words. Host code only: the launchers (<op>_cpu.cpp, <op>_cuda.cu) do not include it.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <initializer_list>
#include <sstream>
#include <string>

namespace nerfx::checks {

// A size an expected shape leaves open (the N of [N, 3]).
constexpr int64_t kAny = -1;

// "torch.float32", as str(dtype) in Python.
inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(type);
  }
}

// "torch.float32, torch.float64 or torch.float16"
inline std::string dtype_names(std::initializer_list<at::ScalarType> types) {
  std::string names;
  std::size_t i = 0;
  for (const at::ScalarType type : types) {
    if (i > 0) names += i + 1 == types.size() ? " or " : ", ";
    names += dtype_name(type);
    ++i;
  }
  return names;
}

// t has one of the dtypes; `note` follows the list: " like t_start", " for torch.float32 x".
//   "composite_rays: t_end must be torch.float64 like t_start, got torch.float32"
inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> types, const std::string& note = "") {
  for (const at::ScalarType type : types) {
    if (t.scalar_type() == type) return;
  }
  TORCH_CHECK(false, op, ": ", name, " must be ", dtype_names(types), note, ", got ",
              dtype_name(t.scalar_type()));
}

// t has the shape `label` describes (e.g. "[S, 3]"), whose sizes are `sizes` (kAny: any size).
// Where every size is known the message gives them too:
//   "composite_rays: rgbs must be [S, 3] = [5, 3], got [5, 2]"
//   "march_rays: rays_o must be [N, 3], got [4]"
inline void check_shape(const char* op, const char* name, const at::Tensor& t, const char* label,
                        at::IntArrayRef sizes) {
  bool matches = t.dim() == static_cast<int64_t>(sizes.size());
  bool known = true;
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    known = known && sizes[d] != kAny;
    matches = matches && (sizes[d] == kAny || t.size(static_cast<int64_t>(d)) == sizes[d]);
  }
  if (matches) return;
  std::ostringstream expected;
  expected << label;
  if (known) {
    std::ostringstream values;
    values << sizes;
    if (values.str() != label) expected << " = " << values.str();
  }
  TORCH_CHECK(false, op, ": ", name, " must be ", expected.str(), ", got ", t.sizes());
}

// t has ref's shape, whatever it is: "adam_step: grad must have param's shape [8], got [7]"
inline void check_same_shape(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have ", ref_name, "'s shape ",
              ref.sizes(), ", got ", t.sizes());
}

// t is on ref's device: "hash_encode: params is on meta but x is on cpu"
inline void check_device(const char* op, const char* name, const at::Tensor& t,
                         const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

// For tensors used in place through flat pointers: a contiguous copy would drop the update.
//   "adam_step: exp_avg must be contiguous (it is updated in place)"
inline void check_contiguous(const char* op, const char* name, const at::Tensor& t,
                             const char* why) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (", why, ")");
}

// A list argument (int[], float[]) of n entries, n described by `label` where it is not a
// plain number: "hash_encode: offsets must have n_levels + 1 = 3 entries, got 2"
template <typename T>
inline void check_list_size(const char* op, const char* name, c10::ArrayRef<T> list,
                            int64_t n, const char* label = nullptr) {
  if (static_cast<int64_t>(list.size()) == n) return;
  TORCH_CHECK(false, op, ": ", name, " must have ", label != nullptr ? label : "",
              label != nullptr ? " = " : "", n, " entries, got ", list.size());
}

}  // namespace nerfx::checks
