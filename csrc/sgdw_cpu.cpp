// CPU implementation of fasttrick::sgdw_: one pass over memory for a whole (device, dtype) group.
//
// The group's tensors (with members: each member's block of each tensor) are treated as one virtual
// concatenation and split into contiguous ranges, one per thread (at::parallel_for), so small tensors
// cost no extra parallel region: on the 2-core dev machine, 62 per-tensor regions (ResNet-18) would add
// tens of microseconds per step.
// The inner loop is the update from sgdw_math.h on SIMD registers as wide as the CPU has; its flags are
// uniform per launch, so their branches cost one well-predicted test per register.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "sgdw_checks.h"
#include "sgdw_math.h"

namespace fasttrick {
namespace {

// Elements per parallel task. 32 K fp32 elements move 640 KB per step (20 B each): large enough to
// amortise the task hand-off, small enough to balance two threads on ResNet-18's 62 tensors.
constexpr int64_t kGrainSize = 32768;

// A SIMD register (GCC/Clang vector extension) of `Bytes` with the operators sgdw_update needs, so the
// one update in sgdw_math.h runs on whole registers. Its width follows the CPU, chosen at run time:
// 64 bytes (AVX-512), 32 (AVX2) or 16 (SSE2, every x86-64; NEON on arm64). Measured on 2 Zen 4 cores
// (benchmarks/test_bench_optim.py, two runs per width, FASTTRICK_CPU_ISA): a 16 M-parameter tensor
// 9.6-10.7 ms with 16-byte registers vs 5.5-6.9 ms with 64-byte ones (torch's fused step 6.5-7.7 ms);
// ResNet-18's parameters 4.9-6.3 ms vs 3.3-4.5 ms.
// GCC ignores vector_size on a typedef that depends on a template parameter: spell each type out.
template <typename T, int Bytes>
struct RawSimd;
#define FASTTRICK_RAW_SIMD(T, Bytes)                    \
  template <>                                           \
  struct RawSimd<T, Bytes> {                            \
    typedef T type __attribute__((vector_size(Bytes))); \
  };
FASTTRICK_RAW_SIMD(float, 16)
FASTTRICK_RAW_SIMD(float, 32)
FASTTRICK_RAW_SIMD(float, 64)
FASTTRICK_RAW_SIMD(double, 16)
FASTTRICK_RAW_SIMD(double, 32)
FASTTRICK_RAW_SIMD(double, 64)
#undef FASTTRICK_RAW_SIMD

template <typename T, int Bytes>
struct Simd {
  using Raw = typename RawSimd<T, Bytes>::type;
  static constexpr int kWidth = Bytes / sizeof(T);
  Raw v;

  FASTTRICK_ALWAYS_INLINE Simd(Raw raw) : v(raw) {}
  FASTTRICK_ALWAYS_INLINE Simd(T scalar) : v(Raw{} + scalar) {}
  FASTTRICK_ALWAYS_INLINE static Simd load(const T* ptr) {
    Raw raw;
    std::memcpy(&raw, ptr, Bytes);
    return raw;
  }
  FASTTRICK_ALWAYS_INLINE void store(T* ptr) const { std::memcpy(ptr, &v, Bytes); }
  FASTTRICK_ALWAYS_INLINE friend Simd operator+(Simd a, Simd b) { return Raw(a.v + b.v); }
  FASTTRICK_ALWAYS_INLINE friend Simd operator-(Simd a, Simd b) { return Raw(a.v - b.v); }
  FASTTRICK_ALWAYS_INLINE friend Simd operator*(Simd a, Simd b) { return Raw(a.v * b.v); }
  FASTTRICK_ALWAYS_INLINE friend Simd operator/(Simd a, Simd b) { return Raw(a.v / b.v); }
  FASTTRICK_ALWAYS_INLINE friend Simd operator-(Simd a) { return Raw(-a.v); }
};

// One tensor's slice [first, last): whole registers, then a scalar tail (and the scalar loop for
// fp16/bf16, which convert element by element). Always inlined into a wrapper compiled for one ISA.
// `s` is taken by value so the scalars stay in registers (a float* store could otherwise alias them).
template <int Bytes, typename scalar_t, bool kHasMomentum, bool kWriteGrad>
FASTTRICK_ALWAYS_INLINE void sgdw_range_body(scalar_t* __restrict__ p, scalar_t* __restrict__ g,
                                             at::opmath_type<scalar_t>* __restrict__ b, int64_t first, int64_t last,
                                             const SgdwScalars<at::opmath_type<scalar_t>> s) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool read_buffer = kHasMomentum && !s.first_step;
  int64_t i = first;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    using Vec = Simd<opmath_t, Bytes>;
    for (; i + Vec::kWidth <= last; i += Vec::kWidth) {
      Vec pv = Vec::load(p + i);
      Vec bv = read_buffer ? Vec::load(b + i) : Vec(opmath_t(0));
      const Vec gv = sgdw_update(pv, Vec::load(g + i), bv, s);
      pv.store(p + i);
      if constexpr (kHasMomentum) {
        bv.store(b + i);
      }
      if constexpr (kWriteGrad) {
        gv.store(g + i);
      }
    }
  }
  for (; i < last; ++i) {
    opmath_t pi = static_cast<opmath_t>(p[i]);
    opmath_t bi = read_buffer ? b[i] : opmath_t(0);
    const opmath_t gi = sgdw_update(pi, static_cast<opmath_t>(g[i]), bi, s);
    p[i] = static_cast<scalar_t>(pi);
    if constexpr (kHasMomentum) {
      b[i] = bi;
    }
    if constexpr (kWriteGrad) {
      g[i] = static_cast<scalar_t>(gi);
    }
  }
}

#define FASTTRICK_RANGE_FOR_ISA(name, attribute, bytes)                                                        \
  template <typename scalar_t, bool kHasMomentum, bool kWriteGrad>                                             \
  attribute void name(scalar_t* p, scalar_t* g, at::opmath_type<scalar_t>* b, int64_t first, int64_t last,   \
                      const SgdwScalars<at::opmath_type<scalar_t>> s) {                                      \
    sgdw_range_body<bytes, scalar_t, kHasMomentum, kWriteGrad>(p, g, b, first, last, s);                     \
  }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTTRICK_HAS_X86_ISAS 1
FASTTRICK_RANGE_FOR_ISA(sgdw_range_avx512, __attribute__((target("avx512f"))), 64)
FASTTRICK_RANGE_FOR_ISA(sgdw_range_avx2, __attribute__((target("avx2"))), 32)
#endif
FASTTRICK_RANGE_FOR_ISA(sgdw_range_baseline, , 16)
#undef FASTTRICK_RANGE_FOR_ISA

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The widest ISA this CPU has, or the one FASTTRICK_CPU_ISA=baseline|avx2|avx512 names (the tests run
// every width on one machine with it; naming one this CPU lacks is an error, not a crash).
Isa cpu_isa() {
  static const Isa isa = [] {
#ifdef FASTTRICK_HAS_X86_ISAS
    const bool has_avx512 = __builtin_cpu_supports("avx512f");
    const bool has_avx2 = __builtin_cpu_supports("avx2");
#else
    const bool has_avx512 = false;
    const bool has_avx2 = false;
#endif
    const char* requested = std::getenv("FASTTRICK_CPU_ISA");
    if (requested == nullptr || *requested == '\0') {
      return has_avx512 ? Isa::kAvx512 : has_avx2 ? Isa::kAvx2 : Isa::kBaseline;
    }
    const std::string name(requested);
    TORCH_CHECK(name == "baseline" || (name == "avx2" && has_avx2) || (name == "avx512" && has_avx512),
                "FASTTRICK_CPU_ISA=", name, " is not one of baseline|avx2|avx512 that this CPU supports");
    return name == "avx512" ? Isa::kAvx512 : name == "avx2" ? Isa::kAvx2 : Isa::kBaseline;
  }();
  return isa;
}

template <typename scalar_t, bool kHasMomentum, bool kWriteGrad>
void sgdw_cpu_range(scalar_t* p, scalar_t* g, at::opmath_type<scalar_t>* b, int64_t first, int64_t last,
                    const SgdwScalars<at::opmath_type<scalar_t>>& s) {
  switch (cpu_isa()) {
#ifdef FASTTRICK_HAS_X86_ISAS
    case Isa::kAvx512:
      return sgdw_range_avx512<scalar_t, kHasMomentum, kWriteGrad>(p, g, b, first, last, s);
    case Isa::kAvx2:
      return sgdw_range_avx2<scalar_t, kHasMomentum, kWriteGrad>(p, g, b, first, last, s);
#endif
    default:
      return sgdw_range_baseline<scalar_t, kHasMomentum, kWriteGrad>(p, g, b, first, last, s);
  }
}

// One member of one tensor (the whole tensor when the launch has one member): what a parallel task walks.
template <typename scalar_t>
struct Segment {
  scalar_t* p;
  scalar_t* g;
  at::opmath_type<scalar_t>* b;  // null without momentum
  int32_t member;                // row of `member_scalars`
};

// `member_scalars[k]`: member k's scalars (one entry for a launch without members). A member's segment
// takes the momentum-free loop when its momentum is 0 (s.has_momentum false): its buffer is left alone.
template <typename scalar_t, bool kWriteGrad>
void sgdw_cpu_group(at::TensorList params, at::TensorList grads, at::TensorList bufs, bool has_momentum,
                    const std::vector<SgdwScalars<at::opmath_type<scalar_t>>>& member_scalars) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t members = static_cast<int64_t>(member_scalars.size());
  std::vector<Segment<scalar_t>> segments;
  segments.reserve(params.size() * members);
  std::vector<int64_t> begin(1, 0);  // prefix sums of numel: segment i owns [begin[i], begin[i+1])
  begin.reserve(params.size() * members + 1);
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t member_numel = params[t].numel() / members;
    scalar_t* p = params[t].data_ptr<scalar_t>();
    scalar_t* g = grads[t].data_ptr<scalar_t>();
    opmath_t* b = has_momentum ? bufs[t].data_ptr<opmath_t>() : nullptr;
    for (int64_t k = 0; k < members; ++k) {
      const int64_t offset = k * member_numel;
      segments.push_back({p + offset, g + offset, b == nullptr ? nullptr : b + offset, static_cast<int32_t>(k)});
      begin.push_back(begin.back() + member_numel);
    }
  }
  const size_t n = segments.size();
  at::parallel_for(0, begin[n], kGrainSize, [&](int64_t lo, int64_t hi) {
    // First segment that owns element `lo` (empty segments own nothing and are skipped).
    size_t i = std::upper_bound(begin.begin(), begin.end(), lo) - begin.begin() - 1;
    for (; i < n && begin[i] < hi; ++i) {
      const Segment<scalar_t>& seg = segments[i];
      const int64_t first = std::max(lo, begin[i]) - begin[i];
      const int64_t last = std::min(hi, begin[i + 1]) - begin[i];
      const SgdwScalars<opmath_t>& s = member_scalars[seg.member];
      if (s.has_momentum) {
        sgdw_cpu_range<scalar_t, true, kWriteGrad>(seg.p, seg.g, seg.b, first, last, s);
      } else {
        sgdw_cpu_range<scalar_t, false, kWriteGrad>(seg.p, seg.g, nullptr, first, last, s);
      }
    }
  });
}

void sgdw_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
              bool first_step, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& hyper,
              const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const SgdwLaunch launch = check_sgdw_inputs(params, grads, bufs, momentum, lr_tensor, hyper, grad_scale, found_inf,
                                              c10::DeviceType::CPU);
  if (params.empty()) {
    return;
  }
  // A CPU tensor can be read without a device sync; a skipped AMP step changes nothing.
  if (found_inf.has_value() && found_inf->item<float>() != 0.0f) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fasttrick_sgdw_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto s = make_sgdw_scalars<opmath_t>(lr, momentum, dampening, weight_decay, launch.has_momentum, nesterov,
                                               maximize, decoupled_weight_decay, first_step, grad_scale.has_value());
    const SgdwTensorScalars tensors = tensor_scalars(lr_tensor, hyper, grad_scale);  // host pointers: CPU tensors
    std::vector<SgdwScalars<opmath_t>> member_scalars(launch.members, s);
    for (int64_t k = 0; k < launch.members; ++k) {
      read_tensor_scalars(member_scalars[k], tensors, k);
    }
    // The AMP grad write-back changes what is stored: compile it in (momentum is chosen per member).
    if (s.has_grad_scale) {
      sgdw_cpu_group<scalar_t, true>(params, grads, bufs, launch.has_momentum, member_scalars);
    } else {
      sgdw_cpu_group<scalar_t, false>(params, grads, bufs, launch.has_momentum, member_scalars);
    }
  });
}

}  // namespace

// The schema is defined once, in Python (src/fasttrick/ops/library.py), so either extension
// (CPU or CUDA) can be built or skipped on its own; this registers the CPU kernel for it.
TORCH_LIBRARY_IMPL(fasttrick, CPU, m) {
  m.impl("sgdw_", &sgdw_cpu);
}

}  // namespace fasttrick

// `import fasttrick._C` loads this library (and so runs the registration above); it has no Python API.
static PyModuleDef fasttrick_cpu_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fasttrick_cpu_module); }
