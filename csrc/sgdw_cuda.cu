// CUDA implementation of fasttrick::sgdw_: one kernel launch per (device, dtype) group per step.
//
// Layout: the group's tensors are cut into chunks of `chunk_size` elements; block b owns chunk b and
// finds its tensor by a binary search over the chunk prefix sums held in the kernel arguments (no
// device-side table, so nothing is allocated or copied per step). Up to kMaxTensors tensors travel
// in one launch (CUDA >= 12.1 allows 32 KB of kernel arguments; 512 tensors use 18.5 KB), which
// covers ResNet-18 (62 tensors) and most models in a single launch; longer lists take more launches.
//
// Each thread moves kILP = 4 elements per iteration: 16 B vector loads for fp32 (8 B for fp16/bf16)
// when every tensor of the launch is aligned, scalar loads otherwise. Tensor lr, hyper, grad_scale and
// found_inf are read on the device: no host sync, and a found_inf != 0 step returns before touching memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>

#include "sgdw_checks.h"
#include "sgdw_math.h"

namespace fasttrick {
namespace {

constexpr int kMaxTensors = 512;
constexpr int kBlockSize = 256;
constexpr int kILP = 4;
// Chunks are sized so a launch has about kTargetBlocksPerSM blocks per SM (enough to hide DRAM latency
// on H100's 132 SMs), between one block-iteration (1024 elements) and 64 K elements.
constexpr int64_t kTargetBlocksPerSM = 8;
constexpr int64_t kMinChunk = kBlockSize * kILP;
constexpr int64_t kMaxChunk = 65536;

template <typename scalar_t, typename opmath_t>
struct LaunchArgs {
  scalar_t* params[kMaxTensors];
  scalar_t* grads[kMaxTensors];
  opmath_t* bufs[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t chunk_begin[kMaxTensors + 1];  // tensor t owns chunks [chunk_begin[t], chunk_begin[t+1])
  int32_t num_tensors;
  int64_t chunk_size;
};

template <typename T>
struct alignas(sizeof(T) * kILP) Vec {
  T val[kILP];
};

template <typename scalar_t, typename opmath_t, bool kHasMomentum, bool kAligned>
__global__ void __launch_bounds__(kBlockSize)
    sgdw_multi_tensor_kernel(const __grid_constant__ LaunchArgs<scalar_t, opmath_t> args,
                             SgdwScalars<opmath_t> s, const SgdwTensorScalars tensors,
                             const float* __restrict__ found_inf_ptr) {
  if (found_inf_ptr != nullptr && *found_inf_ptr != 0.0f) {
    return;
  }
  read_tensor_scalars(s, tensors);  // lr / hyper / grad_scale tensors given: read on the device
  // Tensor owning this block's chunk: last t with chunk_begin[t] <= blockIdx.x.
  int lo = 0;
  int hi = args.num_tensors - 1;
  const int32_t chunk = blockIdx.x;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (args.chunk_begin[mid] <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int t = lo;
  const int64_t start = static_cast<int64_t>(chunk - args.chunk_begin[t]) * args.chunk_size;
  const int64_t end = min(start + args.chunk_size, args.numel[t]);
  scalar_t* __restrict__ p = args.params[t];
  scalar_t* __restrict__ g = args.grads[t];
  opmath_t* __restrict__ b = kHasMomentum ? args.bufs[t] : nullptr;
  const bool write_grad = s.has_grad_scale;

  for (int64_t i0 = start + static_cast<int64_t>(threadIdx.x) * kILP; i0 < end; i0 += kBlockSize * kILP) {
    opmath_t rp[kILP], rg[kILP], rb[kILP];
    const bool full = kAligned && i0 + kILP <= end;
    if (full) {
      const Vec<scalar_t> vp = *reinterpret_cast<const Vec<scalar_t>*>(p + i0);
      const Vec<scalar_t> vg = *reinterpret_cast<const Vec<scalar_t>*>(g + i0);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        rp[k] = static_cast<opmath_t>(vp.val[k]);
        rg[k] = static_cast<opmath_t>(vg.val[k]);
      }
      if (kHasMomentum && !s.first_step) {
        const Vec<opmath_t> vb = *reinterpret_cast<const Vec<opmath_t>*>(b + i0);
#pragma unroll
        for (int k = 0; k < kILP; ++k) rb[k] = vb.val[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        const int64_t i = i0 + k;
        rp[k] = i < end ? static_cast<opmath_t>(p[i]) : opmath_t(0);
        rg[k] = i < end ? static_cast<opmath_t>(g[i]) : opmath_t(0);
        rb[k] = (kHasMomentum && !s.first_step && i < end) ? b[i] : opmath_t(0);
      }
    }
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      rg[k] = sgdw_update<opmath_t>(rp[k], rg[k], rb[k], s);
    }
    if (full) {
      Vec<scalar_t> vp, vg;
      Vec<opmath_t> vb;
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        vp.val[k] = static_cast<scalar_t>(rp[k]);
        vg.val[k] = static_cast<scalar_t>(rg[k]);
        vb.val[k] = rb[k];
      }
      *reinterpret_cast<Vec<scalar_t>*>(p + i0) = vp;
      if (kHasMomentum) *reinterpret_cast<Vec<opmath_t>*>(b + i0) = vb;
      if (write_grad) *reinterpret_cast<Vec<scalar_t>*>(g + i0) = vg;
    } else {
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        const int64_t i = i0 + k;
        if (i < end) {
          p[i] = static_cast<scalar_t>(rp[k]);
          if (kHasMomentum) b[i] = rb[k];
          if (write_grad) g[i] = static_cast<scalar_t>(rg[k]);
        }
      }
    }
  }
}

// c10 only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers a bare toolkit may lack).
int64_t multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

bool is_aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename scalar_t, bool kHasMomentum>
void launch_group(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                  const SgdwScalars<at::opmath_type<scalar_t>>& s, const SgdwTensorScalars& tensors,
                  const float* found_inf_ptr) {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  if (total == 0) return;
  const int64_t sm_count = multiprocessor_count(params[0].get_device());
  int64_t chunk_size = (total + sm_count * kTargetBlocksPerSM - 1) / (sm_count * kTargetBlocksPerSM);
  chunk_size = std::clamp((chunk_size + kMinChunk - 1) / kMinChunk * kMinChunk, kMinChunk, kMaxChunk);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  LaunchArgs<scalar_t, opmath_t> args;
  args.chunk_size = chunk_size;
  int n = 0;
  int32_t chunks = 0;
  bool aligned = true;
  auto flush = [&] {
    if (n == 0) return;
    args.num_tensors = n;
    args.chunk_begin[n] = chunks;
    if (aligned) {
      sgdw_multi_tensor_kernel<scalar_t, opmath_t, kHasMomentum, true>
          <<<chunks, kBlockSize, 0, stream>>>(args, s, tensors, found_inf_ptr);
    } else {
      sgdw_multi_tensor_kernel<scalar_t, opmath_t, kHasMomentum, false>
          <<<chunks, kBlockSize, 0, stream>>>(args, s, tensors, found_inf_ptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    n = 0;
    chunks = 0;
    aligned = true;
  };
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t numel = params[t].numel();
    if (numel == 0) continue;  // an empty tensor owns no chunk (the bug class of pytorch#100701)
    const int64_t tensor_chunks = (numel + chunk_size - 1) / chunk_size;
    TORCH_CHECK(tensor_chunks < (int64_t{1} << 30), "fasttrick::sgdw_: tensor ", t, " is too large");
    if (n == kMaxTensors || chunks + tensor_chunks > (int64_t{1} << 30)) flush();
    args.params[n] = params[t].data_ptr<scalar_t>();
    args.grads[n] = grads[t].data_ptr<scalar_t>();
    args.bufs[n] = kHasMomentum ? bufs[t].data_ptr<opmath_t>() : nullptr;
    args.numel[n] = numel;
    args.chunk_begin[n] = chunks;
    aligned = aligned && is_aligned(args.params[n], sizeof(scalar_t) * kILP) &&
              is_aligned(args.grads[n], sizeof(scalar_t) * kILP) &&
              (!kHasMomentum || is_aligned(args.bufs[n], sizeof(opmath_t) * kILP));
    chunks += static_cast<int32_t>(tensor_chunks);
    ++n;
  }
  flush();
}

void sgdw_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
               bool first_step, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& hyper,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const bool has_momentum = check_sgdw_inputs(params, grads, bufs, momentum, lr_tensor, hyper, grad_scale, found_inf,
                                              c10::DeviceType::CUDA);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard device_guard(params[0].device());
  // Tensor lr / hyper / grad_scale are read inside the kernel, floats are launch arguments: no host sync.
  const SgdwTensorScalars tensors = tensor_scalars(lr_tensor, hyper, grad_scale);
  const float* found_inf_ptr = found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fasttrick_sgdw_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto s = make_sgdw_scalars<opmath_t>(lr, momentum, dampening, weight_decay, has_momentum, nesterov, maximize,
                                               decoupled_weight_decay, first_step, grad_scale.has_value());
    if (has_momentum) {
      launch_group<scalar_t, true>(params, grads, bufs, s, tensors, found_inf_ptr);
    } else {
      launch_group<scalar_t, false>(params, grads, bufs, s, tensors, found_inf_ptr);
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
