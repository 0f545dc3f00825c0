// Input validation shared by the CPU and CUDA implementations of fasttrick::sgdw_. The optimizer
// (src/fasttrick/optim/sgdw.py) already groups tensors by (device, dtype); these checks guard the op
// when it is called directly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>

#include "sgdw_math.h"

namespace fasttrick {

inline at::ScalarType momentum_dtype_for(at::ScalarType param_dtype) {
  // fp16/bf16 params keep an fp32 buffer; fp32 and fp64 keep their own precision.
  return at::toOpMathType(param_dtype);
}

// The kernels walk each tensor as numel consecutive elements from its data pointer: the param must be
// non-overlapping and dense (contiguous, channels-last or any other permutation), and its grad and
// buffer laid out the same. Strides of size-1 dimensions never move the walk, so they may differ (a
// 1x1 convolution's channels-last buffer restored from a contiguous checkpoint).
inline bool same_layout(const at::Tensor& a, const at::Tensor& p) {
  if (a.sizes() != p.sizes()) {
    return false;
  }
  for (int64_t d = 0; d < p.dim(); ++d) {
    if (p.size(d) != 1 && a.stride(d) != p.stride(d)) {
      return false;
    }
  }
  return true;
}

// Whether member k of `p` (dim 0 split into `members` equal blocks) is the k-th run of numel / members
// consecutive elements in memory: dim 0 is the outermost dimension (contiguous, channels-last, any
// permutation that keeps dim 0 first). Every tensor qualifies with one member.
inline bool members_are_blocks(const at::Tensor& p, int64_t members) {
  if (members == 1 || p.numel() == 0) {
    return true;
  }
  return p.dim() >= 1 && p.size(0) % members == 0 && p.size(0) * p.stride(0) == p.numel();
}

struct SgdwLaunch {
  bool has_momentum;  // buffers given
  int64_t members;    // rows of hyper when it is [K, 4], else 1
};

// Validates the op's arguments: what the launch has (momentum buffers, members).
inline SgdwLaunch check_sgdw_inputs(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                                    double momentum, const std::optional<at::Tensor>& lr_tensor,
                                    const std::optional<at::Tensor>& hyper,
                                    const std::optional<at::Tensor>& grad_scale,
                                    const std::optional<at::Tensor>& found_inf, c10::DeviceType device_type) {
  const bool has_momentum = !bufs.empty();
  const bool per_member = hyper.has_value() && hyper->dim() == 2;
  const int64_t members = per_member ? hyper->size(0) : 1;
  TORCH_CHECK(!hyper.has_value() || hyper->dim() == 1 || (per_member && members >= 1 && hyper->size(1) == 4),
              "fasttrick::sgdw_: hyper must be [4] or [members, 4] (lr, momentum, dampening, weight_decay per "
              "member), got ", hyper->sizes());
  TORCH_CHECK(params.size() == grads.size(), "fasttrick::sgdw_: got ", params.size(), " params but ", grads.size(),
              " grads");
  TORCH_CHECK(!has_momentum || bufs.size() == params.size(), "fasttrick::sgdw_: give one momentum buffer per "
              "param or none (momentum 0), got ", bufs.size(), " buffers for ", params.size(), " params");
  TORCH_CHECK(hyper.has_value() || params.empty() || (momentum != 0.0) == has_momentum, "fasttrick::sgdw_: momentum ",
              momentum, " with ", bufs.size(), " buffers; momentum != 0 takes one buffer per param, momentum 0 none");
  if (params.empty()) {
    return {has_momentum, members};
  }
  const auto dtype = params[0].scalar_type();
  const auto device = params[0].device();
  TORCH_CHECK(device.type() == device_type, "fasttrick::sgdw_: params on ", device, " reached the ",
              c10::DeviceTypeName(device_type), " kernel");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "fasttrick::sgdw_ supports float32, float64, float16 and bfloat16 params, got ", dtype);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.layout() == at::kStrided && g.layout() == at::kStrided, "fasttrick::sgdw_: param ", i,
                " or its grad is not a dense (strided) tensor; FusedSGDW.step routes sparse grads elsewhere");
    TORCH_CHECK(members_are_blocks(p, members), "fasttrick::sgdw_: param ", i, " (shape ", p.sizes(), ", strides ",
                p.strides(), ") cannot be split into ", members, " members: dim 0 must be divisible by ", members,
                " and outermost in memory; FusedSGDW.step routes other layouts elsewhere");
    TORCH_CHECK(p.scalar_type() == dtype && p.device() == device, "fasttrick::sgdw_: param ", i, " is ",
                p.scalar_type(), " on ", p.device(), ", expected ", dtype, " on ", device,
                " (one call takes one (device, dtype) group)");
    TORCH_CHECK(g.scalar_type() == dtype && g.device() == device, "fasttrick::sgdw_: grad ", i, " is ",
                g.scalar_type(), " on ", g.device(), ", expected ", dtype, " on ", device);
    TORCH_CHECK(p.is_non_overlapping_and_dense() && same_layout(g, p), "fasttrick::sgdw_: param ", i, " (shape ",
                p.sizes(), ", strides ", p.strides(), ") must be dense and its grad (shape ", g.sizes(), ", strides ",
                g.strides(), ") laid out the same; FusedSGDW.step routes other layouts elsewhere");
    if (has_momentum) {
      const auto& b = bufs[i];
      TORCH_CHECK(b.scalar_type() == momentum_dtype_for(dtype) && b.device() == device, "fasttrick::sgdw_: buffer ",
                  i, " is ", b.scalar_type(), " on ", b.device(), ", expected ", momentum_dtype_for(dtype), " on ",
                  device);
      TORCH_CHECK(same_layout(b, p), "fasttrick::sgdw_: buffer ", i, " (strides ", b.strides(),
                  ") must have its param's shape and layout (strides ", p.strides(), ")");
    }
  }
  // `alt`: a second dtype the tensor may have (kUndefined: none).
  auto check_scalar = [&](const at::Tensor& t, const char* name, int64_t numel, at::ScalarType dtype,
                          at::ScalarType alt) {
    const bool dtype_ok = t.scalar_type() == dtype || t.scalar_type() == alt;
    std::string dtypes = c10::toString(dtype);
    if (alt != at::ScalarType::Undefined) {
      dtypes += std::string(" or ") + c10::toString(alt);
    }
    TORCH_CHECK(t.numel() == numel && dtype_ok && t.device() == device && t.is_contiguous(), "fasttrick::sgdw_: ",
                name, " must be a contiguous ", numel, "-element ", dtypes, " tensor on ", device, ", got ",
                t.scalar_type(), " with ", t.numel(), " elements on ", t.device());
  };
  constexpr auto kNone = at::ScalarType::Undefined;
  if (lr_tensor.has_value()) {
    check_scalar(*lr_tensor, "lr_tensor", 1, at::kFloat, at::kDouble);
  }
  if (hyper.has_value()) {
    check_scalar(*hyper, "hyper", 4 * members, at::kDouble, kNone);
  }
  if (grad_scale.has_value()) {
    check_scalar(*grad_scale, "grad_scale", 1, at::kFloat, kNone);
  }
  if (found_inf.has_value()) {
    check_scalar(*found_inf, "found_inf", 1, at::kFloat, kNone);
  }
  return {has_momentum, members};
}

// Pointers to the op's optional scalar tensors, for read_tensor_scalars (sgdw_math.h).
inline SgdwTensorScalars tensor_scalars(const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& hyper,
                                        const std::optional<at::Tensor>& grad_scale) {
  SgdwTensorScalars t;
  if (lr_tensor.has_value()) {
    t.lr = lr_tensor->const_data_ptr();
    t.lr_is_double = lr_tensor->scalar_type() == at::kDouble;
  }
  if (hyper.has_value()) {
    t.hyper = hyper->const_data_ptr<double>();
    t.per_member = hyper->dim() == 2;
  }
  if (grad_scale.has_value()) {
    t.grad_scale = grad_scale->const_data_ptr<float>();
  }
  return t;
}

}  // namespace fasttrick
