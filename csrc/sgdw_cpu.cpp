// CPU implementation of fasttrick::sgdw_: one pass over memory for a whole (device, dtype) group.
//
// The group's tensors are treated as one virtual concatenation and split into contiguous ranges,
// one per thread (at::parallel_for), so small tensors cost no extra parallel region: on the 2-core
// dev machine, 62 per-tensor regions (ResNet-18) would add tens of microseconds per step.
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

template <typename scalar_t, bool kHasMomentum, bool kWriteGrad>
void sgdw_cpu_group(at::TensorList params, at::TensorList grads, at::TensorList bufs,
                    const SgdwScalars<at::opmath_type<scalar_t>>& s) {
  using opmath_t = at::opmath_type<scalar_t>;
  const size_t n = params.size();
  std::vector<scalar_t*> p_ptr(n);
  std::vector<scalar_t*> g_ptr(n);
  std::vector<opmath_t*> b_ptr(n, nullptr);
  std::vector<int64_t> begin(n + 1, 0);  // prefix sums of numel: tensor t owns [begin[t], begin[t+1])
  for (size_t t = 0; t < n; ++t) {
    p_ptr[t] = params[t].data_ptr<scalar_t>();
    g_ptr[t] = grads[t].data_ptr<scalar_t>();
    if constexpr (kHasMomentum) {
      b_ptr[t] = bufs[t].data_ptr<opmath_t>();
    }
    begin[t + 1] = begin[t] + params[t].numel();
  }
  at::parallel_for(0, begin[n], kGrainSize, [&](int64_t lo, int64_t hi) {
    // First tensor that owns element `lo` (zero-numel tensors own nothing and are skipped).
    size_t t = std::upper_bound(begin.begin(), begin.end(), lo) - begin.begin() - 1;
    for (; t < n && begin[t] < hi; ++t) {
      const int64_t first = std::max(lo, begin[t]) - begin[t];
      const int64_t last = std::min(hi, begin[t + 1]) - begin[t];
      sgdw_cpu_range<scalar_t, kHasMomentum, kWriteGrad>(p_ptr[t], g_ptr[t], b_ptr[t], first, last, s);
    }
  });
}

void sgdw_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay,
              bool first_step, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& hyper,
              const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const bool has_momentum = check_sgdw_inputs(params, grads, bufs, momentum, lr_tensor, hyper, grad_scale, found_inf,
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
    auto s = make_sgdw_scalars<opmath_t>(lr, momentum, dampening, weight_decay, has_momentum, nesterov, maximize,
                                         decoupled_weight_decay, first_step, grad_scale.has_value());
    read_tensor_scalars(s, tensor_scalars(lr_tensor, hyper, grad_scale));  // host pointers: CPU tensors
    // Momentum and the AMP grad write-back change what is loaded and stored: compile them in.
    if (has_momentum) {
      s.has_grad_scale ? sgdw_cpu_group<scalar_t, true, true>(params, grads, bufs, s)
                       : sgdw_cpu_group<scalar_t, true, false>(params, grads, bufs, s);
    } else {
      s.has_grad_scale ? sgdw_cpu_group<scalar_t, false, true>(params, grads, bufs, s)
                       : sgdw_cpu_group<scalar_t, false, false>(params, grads, bufs, s);
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
