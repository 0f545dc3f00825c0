// Host harness for tests/test_cuda_kernel_logic.py: runs the CUDA kernel's code (sgdw_multi_tensor.h)
// on CPU tensors by looping over the launch grid the planner produces, block by block and thread by
// thread. The kernel's threads share no memory and write disjoint elements, so running them one after
// another computes what the GPU computes. Built by the test with torch.utils.cpp_extension.load against
// torch's header-only stable ABI (torch >= 2.10): its headers compile in ~2 s where torch/library.h
// takes ~8 s, which is most of this test's time on CI's 2 cores.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <optional>
#include <vector>

#include "sgdw_math.h"
#include "sgdw_multi_tensor.h"

namespace fasttrick {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

template <typename scalar_t, typename opmath_t, bool kHasMomentum>
void emulate_group(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                   const std::vector<Tensor>& bufs, int64_t members, const SgdwScalars<opmath_t>& s,
                   const DeviceScalars& dev, int64_t sm_count, const LaunchLimits& limits,
                   std::vector<int64_t>& plan) {
  const auto tensors = tensor_refs<scalar_t, opmath_t, kHasMomentum>(params, grads, bufs);
  plan_launches<scalar_t, opmath_t, kHasMomentum>(
      tensors.data(), static_cast<int64_t>(tensors.size()), members, sm_count, limits,
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

// The kernel's arithmetic type: float for fp32/fp16/bf16 params (at::opmath_type), double for fp64.
template <typename scalar_t>
void emulate_dtype(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                   const std::vector<Tensor>& bufs, int64_t members, double lr, const DeviceScalars& dev,
                   double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                   bool decoupled_weight_decay, bool first_step, int64_t sm_count, const LaunchLimits& limits,
                   std::vector<int64_t>& plan) {
  using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const bool has_momentum = !bufs.empty();
  const auto s = make_sgdw_scalars<opmath_t>(lr, momentum, dampening, weight_decay, has_momentum, nesterov, maximize,
                                             decoupled_weight_decay, first_step, dev.tensors.grad_scale != nullptr);
  if (has_momentum) {
    emulate_group<scalar_t, opmath_t, true>(params, grads, bufs, members, s, dev, sm_count, limits, plan);
  } else {
    emulate_group<scalar_t, opmath_t, false>(params, grads, bufs, members, s, dev, sm_count, limits, plan);
  }
}

const float* scalar_ptr(const std::optional<Tensor>& t, const char* name) {
  if (!t.has_value()) return nullptr;
  STD_TORCH_CHECK(t->is_cpu() && t->numel() == 1, name, " must be a one-element float32 CPU tensor");
  return t->mutable_data_ptr<float>();
}

// Returns the plan, four numbers per launch: tensors, blocks, aligned (0/1), chunk size.
// `limits` = [chunk_granule, max_chunk, blocks_per_sm, max_chunks_per_launch]; empty: the CUDA build's.
// `member_table`: float64 [K, 4] rows (lr, momentum, dampening, weight_decay), each param's dim 0 split into K
// members (the float hyper-parameters are then unused); buffers are given or not, whatever the momenta.
std::vector<int64_t> emulate_sgdw(std::vector<Tensor> params, std::vector<Tensor> grads, std::vector<Tensor> bufs,
                                  double lr, std::optional<Tensor> lr_tensor, std::optional<Tensor> grad_scale,
                                  std::optional<Tensor> found_inf, double momentum, double dampening,
                                  double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
                                  bool first_step, int64_t sm_count, std::vector<int64_t> limits,
                                  std::optional<Tensor> member_table) {
  STD_TORCH_CHECK(grads.size() == params.size() &&
                      (member_table.has_value() ? bufs.empty() || bufs.size() == params.size()
                                                : bufs.size() == (momentum != 0.0 ? params.size() : 0)),
                  "emulate_sgdw: one grad per param, and one buffer per param iff momentum != 0 (with a member "
                  "table: one per param or none)");
  int64_t members = 1;
  if (member_table.has_value()) {
    STD_TORCH_CHECK(member_table->is_cpu() && member_table->dim() == 2 && member_table->size(1) == 4 &&
                        member_table->size(0) >= 1 && member_table->is_contiguous() &&
                        member_table->scalar_type() == ScalarType::Double,
                    "emulate_sgdw: member_table must be a contiguous float64 [K, 4] CPU tensor");
    members = member_table->size(0);
  }
  STD_TORCH_CHECK(limits.empty() || limits.size() == 4, "emulate_sgdw: limits takes 4 numbers or none");
  const LaunchLimits launch_limits =
      limits.empty() ? kCudaLaunchLimits : LaunchLimits{limits[0], limits[1], limits[2], limits[3]};
  std::vector<int64_t> plan;
  if (params.empty()) return plan;
  for (size_t t = 0; t < params.size(); ++t) {
    // dtypes are checked by mutable_data_ptr<T>() in tensor_refs.
    STD_TORCH_CHECK(params[t].is_cpu() && params[t].is_contiguous() && grads[t].is_contiguous() &&
                        grads[t].numel() == params[t].numel() &&
                        (bufs.empty() || (bufs[t].is_contiguous() && bufs[t].numel() == params[t].numel())) &&
                        params[t].numel() % members == 0,
                    "emulate_sgdw: tensor ", t, " is not a contiguous CPU param/grad/buffer triple of ", members,
                    " equal members");
  }
  SgdwTensorScalars tensors;
  if (member_table.has_value()) {
    tensors.hyper = member_table->mutable_data_ptr<double>();
    tensors.per_member = true;
  }
  tensors.lr = scalar_ptr(lr_tensor, "lr_tensor");
  tensors.grad_scale = scalar_ptr(grad_scale, "grad_scale");
  const DeviceScalars dev{tensors, scalar_ptr(found_inf, "found_inf")};
  const auto run = [&](auto scalar) {
    emulate_dtype<decltype(scalar)>(params, grads, bufs, members, lr, dev, momentum, dampening, weight_decay,
                                    nesterov, maximize, decoupled_weight_decay, first_step, sm_count, launch_limits,
                                    plan);
  };
  switch (params[0].scalar_type()) {
    case ScalarType::Float: run(float{}); break;
    case ScalarType::Double: run(double{}); break;
    case ScalarType::Half: run(c10::Half{}); break;
    case ScalarType::BFloat16: run(c10::BFloat16{}); break;
    default: STD_TORCH_CHECK(false, "emulate_sgdw: params must be float32, float64, float16 or bfloat16");
  }
  return plan;
}

}  // namespace

STABLE_TORCH_LIBRARY(fasttrick_emulate, m) {
  m.def(
      "sgdw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, float lr, Tensor? lr_tensor, "
      "Tensor? grad_scale, Tensor? found_inf, float momentum, float dampening, float weight_decay, bool nesterov, "
      "bool maximize, bool decoupled_weight_decay, bool first_step, int sm_count, int[] limits, "
      "Tensor? member_table=None) -> int[]");
}

STABLE_TORCH_LIBRARY_IMPL(fasttrick_emulate, CPU, m) { m.impl("sgdw_", TORCH_BOX(&emulate_sgdw)); }

}  // namespace fasttrick
