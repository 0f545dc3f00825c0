// Input validation shared by the CPU and CUDA implementations of fasttrick::sgdw_. The optimizer
// (src/fasttrick/optim/sgdw.py) already groups tensors by (device, dtype); these checks guard the op
// when it is called directly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace fasttrick {

inline at::ScalarType momentum_dtype_for(at::ScalarType param_dtype) {
  // fp16/bf16 params keep an fp32 buffer; fp32 and fp64 keep their own precision.
  return at::toOpMathType(param_dtype);
}

inline void check_sgdw_inputs(at::TensorList params, at::TensorList grads, at::TensorList bufs, const at::Tensor& lr,
                              const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                              bool has_momentum, c10::DeviceType device_type) {
  TORCH_CHECK(params.size() == grads.size(), "fasttrick::sgdw_: got ", params.size(), " params but ", grads.size(),
              " grads");
  TORCH_CHECK(!has_momentum || bufs.size() == params.size(), "fasttrick::sgdw_: momentum != 0 needs one buffer per "
              "param, got ", bufs.size(), " buffers for ", params.size(), " params");
  TORCH_CHECK(has_momentum || bufs.empty(), "fasttrick::sgdw_: momentum == 0 takes no buffers, got ", bufs.size());
  if (params.empty()) {
    return;
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
    TORCH_CHECK(p.scalar_type() == dtype && p.device() == device, "fasttrick::sgdw_: param ", i, " is ",
                p.scalar_type(), " on ", p.device(), ", expected ", dtype, " on ", device,
                " (one call takes one (device, dtype) group)");
    TORCH_CHECK(g.scalar_type() == dtype && g.device() == device, "fasttrick::sgdw_: grad ", i, " is ",
                g.scalar_type(), " on ", g.device(), ", expected ", dtype, " on ", device);
    TORCH_CHECK(!g.is_sparse(), "fasttrick::sgdw_ does not support sparse gradients (param ", i, ")");
    TORCH_CHECK(p.sizes() == g.sizes(), "fasttrick::sgdw_: param ", i, " has shape ", p.sizes(), " but its grad has ",
                g.sizes());
    TORCH_CHECK(p.is_non_overlapping_and_dense() && p.strides() == g.strides(), "fasttrick::sgdw_: param ", i,
                " and its grad must be dense with the same strides (contiguous or channels-last)");
    if (has_momentum) {
      const auto& b = bufs[i];
      TORCH_CHECK(b.scalar_type() == momentum_dtype_for(dtype) && b.device() == device, "fasttrick::sgdw_: buffer ",
                  i, " is ", b.scalar_type(), " on ", b.device(), ", expected ", momentum_dtype_for(dtype), " on ",
                  device);
      TORCH_CHECK(b.sizes() == p.sizes() && b.strides() == p.strides(), "fasttrick::sgdw_: buffer ", i,
                  " must have its param's shape and strides");
    }
  }
  auto check_scalar = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == device, "fasttrick::sgdw_: ", name,
                " must be a one-element float32 tensor on ", device, ", got ", t.scalar_type(), " with ", t.numel(),
                " elements on ", t.device());
  };
  check_scalar(lr, "lr");
  if (grad_scale.has_value()) {
    check_scalar(*grad_scale, "grad_scale");
  }
  if (found_inf.has_value()) {
    check_scalar(*found_inf, "found_inf");
  }
}

}  // namespace fasttrick
