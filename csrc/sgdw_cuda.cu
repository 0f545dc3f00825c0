// CUDA implementation of fasttrick::sgdw_: one kernel launch per (device, dtype) group per step.
//
// The kernel's per-thread work and the launch planning live in sgdw_multi_tensor.h (host + device code,
// also run on the CPU by tests/test_cuda_kernel_logic.py); this file holds only the kernel entry, the
// launches and the op's entry function.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <Python.h>
#include <torch/library.h>

#include "sgdw_checks.h"
#include "sgdw_math.h"
#include "sgdw_multi_tensor.h"

namespace fasttrick {
namespace {

// __grid_constant__: the 24.5 KB of arguments stay in the constant bank; threads index into them without
// a per-thread copy.
template <typename scalar_t, typename opmath_t, bool kHasMomentum, bool kAligned>
__global__ void __launch_bounds__(kBlockSize)
    sgdw_multi_tensor_kernel(const __grid_constant__ LaunchArgs<scalar_t, opmath_t> args, SgdwScalars<opmath_t> s,
                             DeviceScalars dev) {
  sgdw_multi_tensor_thread<scalar_t, opmath_t, kHasMomentum, kAligned>(args, s, dev, blockIdx.x, threadIdx.x);
}

// c10 only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers a bare toolkit may lack).
int64_t multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

template <typename scalar_t, bool kHasMomentum>
void launch_group(at::TensorList params, at::TensorList grads, at::TensorList bufs, int64_t members,
                  const SgdwScalars<at::opmath_type<scalar_t>>& s, const DeviceScalars& dev) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto tensors = tensor_refs<scalar_t, opmath_t, kHasMomentum>(params, grads, bufs);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  plan_launches<scalar_t, opmath_t, kHasMomentum>(
      tensors.data(), static_cast<int64_t>(tensors.size()), members, multiprocessor_count(params[0].get_device()),
      kCudaLaunchLimits, [&](const LaunchArgs<scalar_t, opmath_t>& args, int32_t num_blocks, bool aligned) {
        if (aligned) {
          sgdw_multi_tensor_kernel<scalar_t, opmath_t, kHasMomentum, true>
              <<<num_blocks, kBlockSize, 0, stream>>>(args, s, dev);
        } else {
          sgdw_multi_tensor_kernel<scalar_t, opmath_t, kHasMomentum, false>
              <<<num_blocks, kBlockSize, 0, stream>>>(args, s, dev);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void sgdw_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
               bool first_step, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& hyper,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const SgdwLaunch launch = check_sgdw_inputs(params, grads, bufs, momentum, lr_tensor, hyper, grad_scale, found_inf,
                                              c10::DeviceType::CUDA);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard device_guard(params[0].device());
  // Tensor lr / hyper (a member's row) / grad_scale / found_inf are read inside the kernel, floats are
  // launch arguments: no host sync.
  const DeviceScalars dev{tensor_scalars(lr_tensor, hyper, grad_scale),
                          found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fasttrick_sgdw_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto s = make_sgdw_scalars<opmath_t>(lr, momentum, dampening, weight_decay, launch.has_momentum, nesterov,
                                               maximize, decoupled_weight_decay, first_step, grad_scale.has_value());
    if (launch.has_momentum) {
      launch_group<scalar_t, true>(params, grads, bufs, launch.members, s, dev);
    } else {
      launch_group<scalar_t, false>(params, grads, bufs, launch.members, s, dev);
    }
  });
}

}  // namespace

// Schema: src/fasttrick/ops/library.py. This registers the CUDA kernel for it.
TORCH_LIBRARY_IMPL(fasttrick, CUDA, m) {
  m.impl("sgdw_", &sgdw_cuda);
}

}  // namespace fasttrick

// `import fasttrick._C_cuda` loads this library (and so runs the registration above).
static PyModuleDef fasttrick_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&fasttrick_cuda_module); }
