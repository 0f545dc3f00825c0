// The CUDA multi-tensor kernel's logic, written once for two compilers: what one thread of one block
// does (find the tensor from the chunk, vector or scalar path, tails) and how a group of tensors is cut
// into launches (chunk size from the SM count, a flush at kMaxTensors tensors or at the chunk limit,
// empty tensors skipped). nvcc builds it into the kernel (sgdw_cuda.cu calls it with blockIdx and
// threadIdx); g++ builds it into a host harness (csrc/tests/sgdw_emulate.cpp) that loops over the same
// grid of blocks and threads, so tests/test_cuda_kernel_logic.py checks this exact code in CI, on a CPU.
//
// Layout: the group's tensors are cut into chunks of `chunk_size` elements; block b owns chunk b and
// finds its tensor by a binary search over the chunk prefix sums held in the kernel arguments (no
// device-side table, so nothing is allocated or copied per step). With members (each tensor's dim 0
// split into K blocks, each with its own row of hyper-parameters), chunks are cut at member boundaries,
// so a block serves one member: it finds the member from its chunk index and reads that member's row.
// Up to kMaxTensors tensors travel in one launch (CUDA >= 12.1 allows 32 KB of kernel arguments; 512
// tensors use 24.5 KB), which covers ResNet-18 (62 tensors, stacked members or not) and most models in
// a single launch; longer lists take more launches.
//
// Each thread moves kILP = 4 elements per iteration: 16 B vector loads for fp32 (8 B for fp16/bf16)
// when every tensor of the launch is aligned, scalar loads otherwise. lr, grad_scale and found_inf
// may be read on the device: no host sync, and a found_inf != 0 step returns before touching memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "sgdw_math.h"

namespace fasttrick {

constexpr int kMaxTensors = 512;
constexpr int kBlockSize = 256;
constexpr int kILP = 4;

// How a group is cut into chunks and launches; the CUDA build uses kCudaLaunchLimits, the CPU test
// smaller values (same code) so that chunk and launch boundaries fall inside small tensors.
struct LaunchLimits {
  int64_t chunk_granule;          // chunk sizes are multiples of this (and so of kILP: chunks start vector-aligned)
  int64_t max_chunk;              // largest chunk, in elements (a multiple of chunk_granule)
  int64_t blocks_per_sm;          // target blocks per SM for a launch
  int64_t max_chunks_per_launch;  // grid size limit; a longer group (or tensor) continues in the next launch
};

// About 8 blocks per SM hide DRAM latency on H100's 132 SMs; a chunk is at least one block-iteration
// (256 threads x 4 = 1024 elements) and at most 64 K elements. 2^30 blocks stay inside gridDim.x (2^31 - 1)
// and the int32 chunk offsets.
constexpr LaunchLimits kCudaLaunchLimits{kBlockSize * kILP, 65536, 8, int64_t{1} << 30};

// 24.5 KB with kMaxTensors = 512 (CUDA >= 12.1 takes up to 32 KB of kernel arguments).
template <typename scalar_t, typename opmath_t>
struct LaunchArgs {
  scalar_t* params[kMaxTensors];
  scalar_t* grads[kMaxTensors];
  opmath_t* bufs[kMaxTensors];
  int64_t member_numel[kMaxTensors];     // elements per member: the tensor's numel without members
  int32_t first_chunk[kMaxTensors];      // the tensor's own chunk this launch starts at (0 unless continued)
  int32_t chunk_begin[kMaxTensors + 1];  // tensor t owns this launch's chunks [chunk_begin[t], chunk_begin[t+1])
  int32_t num_tensors;
  int64_t chunk_size;
};

// Hyper-parameters read from device memory by every thread. lr: the caller's one-element tensor, or
// null when SgdwScalars::lr already holds the value passed as a launch argument. grad_scale and
// found_inf: GradScaler's tensors, or null.
struct DeviceScalars {
  SgdwTensorScalars tensors;  // the lr / hyper / grad_scale tensors given to the op (sgdw_math.h)
  const float* found_inf;
};

template <typename T>
struct alignas(sizeof(T) * kILP) Vec {
  T val[kILP];
};

template <typename T>
FASTTRICK_HOST_DEVICE bool is_vec_aligned(const T* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % sizeof(Vec<T>) == 0;
}

// One 16 B (fp32) / 8 B (fp16, bf16) access. On the host (the CPU test) it goes through memcpy and
// throws where the device would fault: a vector access the planner should have kept off the vector path.
template <typename T>
FASTTRICK_HOST_DEVICE Vec<T> load_vec(const T* ptr) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Vec<T>*>(ptr);
#else
  if (!is_vec_aligned(ptr)) throw std::logic_error("fasttrick: misaligned vector load in the multi-tensor kernel");
  Vec<T> v;
  std::memcpy(static_cast<void*>(&v), ptr, sizeof(v));
  return v;
#endif
}

template <typename T>
FASTTRICK_HOST_DEVICE void store_vec(T* ptr, const Vec<T>& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Vec<T>*>(ptr) = v;
#else
  if (!is_vec_aligned(ptr)) throw std::logic_error("fasttrick: misaligned vector store in the multi-tensor kernel");
  std::memcpy(static_cast<void*>(ptr), &v, sizeof(v));
#endif
}

// The work of thread `thread` of block `block` (the kernel passes threadIdx.x and blockIdx.x; the block
// has kBlockSize threads). kAligned: every pointer of the launch is vector-aligned (plan_launches decides).
template <typename scalar_t, typename opmath_t, bool kHasMomentum, bool kAligned>
FASTTRICK_HOST_DEVICE void sgdw_multi_tensor_thread(const LaunchArgs<scalar_t, opmath_t>& args,
                                                    SgdwScalars<opmath_t> s, const DeviceScalars& dev, int32_t block,
                                                    int32_t thread) {
  if (dev.found_inf != nullptr && *dev.found_inf != 0.0f) {
    return;
  }
  // Tensor owning this block's chunk: last t with chunk_begin[t] <= block.
  int lo = 0;
  int hi = args.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (args.chunk_begin[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int t = lo;
  // The chunk within its tensor, and so its member: each member's elements start a new chunk.
  const int64_t chunk = args.first_chunk[t] + (block - args.chunk_begin[t]);
  const int64_t member_numel = args.member_numel[t];
  const int64_t chunks_per_member = (member_numel + args.chunk_size - 1) / args.chunk_size;
  const int64_t member = chunk / chunks_per_member;
  const int64_t member_end = (member + 1) * member_numel;
  const int64_t start = member * member_numel + (chunk - member * chunks_per_member) * args.chunk_size;
  const int64_t end = start + args.chunk_size < member_end ? start + args.chunk_size : member_end;
  // The device-resident hyper-parameters (this member's row), read here and nowhere else.
  read_tensor_scalars(s, dev.tensors, member);
  const bool use_buffer = kHasMomentum && s.has_momentum;  // false for a member with momentum 0
  scalar_t* __restrict__ p = args.params[t];
  scalar_t* __restrict__ g = args.grads[t];
  opmath_t* __restrict__ b = kHasMomentum ? args.bufs[t] : nullptr;
  const bool write_grad = s.has_grad_scale;

  for (int64_t i0 = start + static_cast<int64_t>(thread) * kILP; i0 < end; i0 += kBlockSize * kILP) {
    opmath_t rp[kILP], rg[kILP], rb[kILP];
    const bool full = kAligned && i0 + kILP <= end;
    if (full) {
      const Vec<scalar_t> vp = load_vec(p + i0);
      const Vec<scalar_t> vg = load_vec(g + i0);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        rp[k] = static_cast<opmath_t>(vp.val[k]);
        rg[k] = static_cast<opmath_t>(vg.val[k]);
      }
      if (use_buffer && !s.first_step) {
        const Vec<opmath_t> vb = load_vec(b + i0);
#pragma unroll
        for (int k = 0; k < kILP; ++k) rb[k] = vb.val[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        const int64_t i = i0 + k;
        rp[k] = i < end ? static_cast<opmath_t>(p[i]) : opmath_t(0);
        rg[k] = i < end ? static_cast<opmath_t>(g[i]) : opmath_t(0);
        rb[k] = (use_buffer && !s.first_step && i < end) ? b[i] : opmath_t(0);
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
      store_vec(p + i0, vp);
      if (use_buffer) store_vec(b + i0, vb);
      if (write_grad) store_vec(g + i0, vg);
    } else {
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        const int64_t i = i0 + k;
        if (i < end) {
          p[i] = static_cast<scalar_t>(rp[k]);
          if (use_buffer) b[i] = rb[k];
          if (write_grad) g[i] = static_cast<scalar_t>(rg[k]);
        }
      }
    }
  }
}

// ---- Launch planning (host code; the same in the CUDA build and the CPU test) ----

template <typename scalar_t, typename opmath_t>
struct TensorRef {
  scalar_t* param;
  scalar_t* grad;
  opmath_t* buf;  // null without momentum
  int64_t numel;
};

// The planner's view of a group: any list whose elements have mutable_data_ptr<T>() and numel() (at::TensorList,
// std::vector<torch::stable::Tensor>).
template <typename scalar_t, typename opmath_t, bool kHasMomentum, typename List>
std::vector<TensorRef<scalar_t, opmath_t>> tensor_refs(const List& params, const List& grads, const List& bufs) {
  std::vector<TensorRef<scalar_t, opmath_t>> refs;
  refs.reserve(params.size());
  for (size_t t = 0; t < params.size(); ++t) {
    refs.push_back({params[t].template mutable_data_ptr<scalar_t>(), grads[t].template mutable_data_ptr<scalar_t>(),
                    kHasMomentum ? bufs[t].template mutable_data_ptr<opmath_t>() : nullptr, params[t].numel()});
  }
  return refs;
}

// Elements per chunk: enough chunks for blocks_per_sm blocks on every SM, rounded up to the granule.
inline int64_t plan_chunk_size(int64_t total_numel, int64_t sm_count, const LaunchLimits& limits) {
  const int64_t target_blocks = std::max<int64_t>(sm_count, 1) * limits.blocks_per_sm;
  int64_t chunk = (total_numel + target_blocks - 1) / target_blocks;
  chunk = (chunk + limits.chunk_granule - 1) / limits.chunk_granule * limits.chunk_granule;
  return std::clamp(chunk, limits.chunk_granule, limits.max_chunk);
}

// Cuts `tensors` into launches and calls launch(args, num_blocks, aligned) for each. Each tensor's dim 0 is
// `members` equal blocks (1: the whole tensor), each cut into its own chunks. A launch ends at kMaxTensors
// tensors or limits.max_chunks_per_launch chunks (a tensor that does not fit continues, from a chunk
// boundary, in the next launch); empty tensors own no chunk (the bug class of pytorch#100701). A launch
// takes the vector path only if every chunk in it starts vector-aligned.
template <typename scalar_t, typename opmath_t, bool kHasMomentum, typename Launch>
void plan_launches(const TensorRef<scalar_t, opmath_t>* tensors, int64_t num_tensors, int64_t members,
                   int64_t sm_count, const LaunchLimits& limits, Launch&& launch) {
  if (limits.chunk_granule <= 0 || limits.chunk_granule % kILP != 0 || limits.max_chunk % limits.chunk_granule != 0 ||
      limits.blocks_per_sm <= 0 || limits.max_chunks_per_launch <= 0 ||
      limits.max_chunks_per_launch > (int64_t{1} << 30)) {
    throw std::invalid_argument("fasttrick: bad LaunchLimits (chunk_granule a positive multiple of " +
                                std::to_string(kILP) +
                                ", max_chunk a multiple of it, max_chunks_per_launch in [1, 2^30])");
  }
  if (members < 1) throw std::invalid_argument("fasttrick: members must be at least 1");
  int64_t total = 0;
  for (int64_t t = 0; t < num_tensors; ++t) total += tensors[t].numel;
  if (total == 0) return;
  const int64_t chunk_size = plan_chunk_size(total, sm_count, limits);

  LaunchArgs<scalar_t, opmath_t> args;
  args.chunk_size = chunk_size;
  int32_t n = 0;
  int64_t chunks = 0;
  bool aligned = true;
  auto flush = [&] {
    if (n == 0) return;
    args.num_tensors = n;
    args.chunk_begin[n] = static_cast<int32_t>(chunks);
    launch(args, static_cast<int32_t>(chunks), aligned);
    n = 0;
    chunks = 0;
    aligned = true;
  };
  for (int64_t t = 0; t < num_tensors; ++t) {
    const TensorRef<scalar_t, opmath_t>& ref = tensors[t];
    if (ref.numel == 0) continue;
    const int64_t member_numel = ref.numel / members;
    const int64_t tensor_chunks = members * ((member_numel + chunk_size - 1) / chunk_size);
    // Chunks start at multiples of chunk_size within a member (a multiple of kILP), so every chunk of the
    // tensor starts aligned when the tensor does and each member's block is a whole number of vectors.
    const bool tensor_aligned = is_vec_aligned(ref.param) && is_vec_aligned(ref.grad) &&
                                (!kHasMomentum || is_vec_aligned(ref.buf)) &&
                                (members == 1 || member_numel % kILP == 0);
    for (int64_t done = 0; done < tensor_chunks;) {
      if (n == kMaxTensors || chunks == limits.max_chunks_per_launch) flush();
      const int64_t piece_chunks = std::min(tensor_chunks - done, limits.max_chunks_per_launch - chunks);
      args.params[n] = ref.param;
      args.grads[n] = ref.grad;
      args.bufs[n] = kHasMomentum ? ref.buf : nullptr;
      args.member_numel[n] = member_numel;
      args.first_chunk[n] = static_cast<int32_t>(done);
      args.chunk_begin[n] = static_cast<int32_t>(chunks);
      aligned = aligned && tensor_aligned;
      chunks += piece_chunks;
      done += piece_chunks;
      ++n;
    }
  }
  flush();
}

}  // namespace fasttrick
