// Host harness for tests/test_cuda_kernel_logic.py: runs the CUDA kernel's code (sgdw_multi_tensor.h)
// on CPU tensors by looping over the launch grid the planner produces, block by block and thread by
// thread. The kernel's threads share no memory and write disjoint elements, so running them one after
// another computes what the GPU computes. Built by the test with torch.utils.cpp_extension.load; light
// headers only (no ATen/ATen.h), which keeps its compile to a few seconds.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "sgdw_math.h"
#include "sgdw_multi_tensor.h"

namespace fasttrick {
namespace {

template <typename scalar_t, bool kHasMomentum>
void emulate_group(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                   const SgdwScalars<at::opmath_type<scalar_t>>& s, const DeviceScalars& dev, int64_t sm_count,
                   const LaunchLimits& limits, std::vector<int64_t>& plan) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto tensors = tensor_refs<scalar_t, opmath_t, kHasMomentum>(params, grads, bufs);
  plan_launches<scalar_t, opmath_t, kHasMomentum>(
      tensors.data(), static_cast<int64_t>(tensors.size()), sm_count, limits,
      [&](const LaunchArgs<scalar_t, opmath_t>& args, int32_t num_blocks, bool aligned) {
        plan.insert(plan.end(), {args.num_tensors, num_blocks, aligned ? 1 : 0, args.chunk_size});
        for (int32_t block = 0; block < num_blocks; ++block) {
          for (int32_t thread = 0; thread < kBlockSize; ++thread) {
            if (aligned) {
              sgdw_multi_tensor_thread<scalar_t, opmath_t, kHasMomentum, true>(args, s, dev, block, thread);
            } else {
              sgdw_multi_tensor_thread<scalar_t, opmath_t, kHasMomentum, false>(args, s, dev, block, thread);
            }
          }
        }
      });
}

const float* scalar_ptr(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->is_cpu() && t->scalar_type() == at::kFloat && t->numel() == 1, name,
              " must be a one-element float32 CPU tensor");
  return t->data_ptr<float>();
}

// Returns the plan, four numbers per launch: tensors, blocks, aligned (0/1), chunk size.
// `limits` = [chunk_granule, max_chunk, blocks_per_sm, max_chunks_per_launch]; empty: the CUDA build's.
std::vector<int64_t> emulate_sgdw(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                                  const std::optional<at::Tensor>& lr_tensor,
                                  const std::optional<at::Tensor>& grad_scale,
                                  const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                                  double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
                                  bool first_step, int64_t sm_count, at::IntArrayRef limits) {
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK(grads.size() == params.size() && bufs.size() == (has_momentum ? params.size() : 0),
              "emulate_sgdw: one grad per param, and one buffer per param iff momentum != 0");
  TORCH_CHECK(limits.empty() || limits.size() == 4, "emulate_sgdw: limits takes 4 numbers or none");
  const LaunchLimits launch_limits =
      limits.empty() ? kCudaLaunchLimits : LaunchLimits{limits[0], limits[1], limits[2], limits[3]};
  std::vector<int64_t> plan;
  if (params.empty()) return plan;
  for (size_t t = 0; t < params.size(); ++t) {
    TORCH_CHECK(params[t].is_cpu() && params[t].scalar_type() == params[0].scalar_type() &&
                    grads[t].scalar_type() == params[0].scalar_type() && params[t].is_contiguous() &&
                    grads[t].is_contiguous() && grads[t].numel() == params[t].numel() &&
                    (!has_momentum || (bufs[t].is_contiguous() && bufs[t].numel() == params[t].numel() &&
                                       bufs[t].scalar_type() == at::toOpMathType(params[0].scalar_type()))),
                "emulate_sgdw: tensor ", t, " is not a contiguous CPU param/grad/buffer triple of the group's dtype");
  }
  const DeviceScalars dev{scalar_ptr(lr_tensor, "lr_tensor"), scalar_ptr(grad_scale, "grad_scale"),
                          scalar_ptr(found_inf, "found_inf")};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "emulate_sgdw", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    auto s = make_sgdw_scalars<opmath_t>(momentum, dampening, weight_decay, nesterov, maximize,
                                         decoupled_weight_decay, first_step, grad_scale.has_value());
    s.lr = static_cast<opmath_t>(lr);
    if (has_momentum) {
      emulate_group<scalar_t, true>(params, grads, bufs, s, dev, sm_count, launch_limits, plan);
    } else {
      emulate_group<scalar_t, false>(params, grads, bufs, s, dev, sm_count, launch_limits, plan);
    }
  });
  return plan;
}

}  // namespace

TORCH_LIBRARY(fasttrick_emulate, m) {
  m.def(
      "sgdw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, float lr, Tensor? lr_tensor, "
      "Tensor? grad_scale, Tensor? found_inf, float momentum, float dampening, float weight_decay, bool nesterov, "
      "bool maximize, bool decoupled_weight_decay, bool first_step, int sm_count, int[] limits) -> int[]");
  m.impl("sgdw_", c10::DispatchKey::CPU, &emulate_sgdw);
}

}  // namespace fasttrick
