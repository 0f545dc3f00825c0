// The FusedSGDW per-element update: written once, used by the CPU kernel (sgdw_cpu.cpp) and the
// CUDA kernel (sgdw_cuda.cu), so the two cannot drift. The Python oracle (ops/reference.py) and the
// Triton kernel (ops/triton_sgdw.py) spell the same steps; tests tie all four to torch.optim.SGD.
//
// Per element, in this order (g = grad, b = momentum buffer, arithmetic in opmath_t: float for
// fp32/fp16/bf16 params, double for fp64):
//   1. g = g / grad_scale                      (AMP; the caller stores the unscaled g back)
//   2. g = -g                                  (maximize)
//   3. g = g + wd * p                          (coupled L2, == torch.optim.SGD)
//      p = p * (1 - lr * wd)                   (decoupled_weight_decay)
//   4. b = g on the tensor's first step, else b = momentum * b + (1 - dampening) * g
//   5. u = g + momentum * b (nesterov) else b
//   6. p = p - lr * u
//
// Members: a launch may split each tensor's dim 0 into K equal blocks ("members", e.g. K models trained
// as one stacked tensor), each with its own row of the fp64 table `hyper` [K, 4] (lr, momentum,
// dampening, weight_decay). A member whose momentum is 0 takes torch.optim.SGD's momentum-0 update
// (u = g) and neither reads nor writes its part of the buffer.
#pragma once

#if defined(__CUDACC__)
#define FASTTRICK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTTRICK_HOST_DEVICE inline __attribute__((always_inline))
#endif
#define FASTTRICK_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fasttrick {

// Hyper-parameters of one launch, already converted to the arithmetic type (fp64 params: double, so
// an lr of 0.1 is the double 0.1, as in torch.optim.SGD). `one_minus_dampening`
// is computed on the host in double, as torch.optim.SGD does (`alpha=1 - dampening`).
template <typename opmath_t>
struct SgdwScalars {
  opmath_t lr;
  opmath_t grad_scale;  // only read when has_grad_scale
  opmath_t momentum;
  opmath_t one_minus_dampening;
  opmath_t weight_decay;
  bool has_grad_scale;
  bool has_momentum;
  bool nesterov;
  bool maximize;
  bool decoupled_weight_decay;
  bool first_step;
};

// The launch's hyper-parameters from the op's float arguments (eager steps: launch arguments).
// `has_momentum` is whether the launch has buffers (the op's rule), not read from `momentum`.
template <typename opmath_t>
inline SgdwScalars<opmath_t> make_sgdw_scalars(double lr, double momentum, double dampening, double weight_decay,
                                               bool has_momentum, bool nesterov, bool maximize,
                                               bool decoupled_weight_decay, bool first_step, bool has_grad_scale) {
  SgdwScalars<opmath_t> s;
  s.lr = static_cast<opmath_t>(lr);
  s.grad_scale = opmath_t(1);
  s.momentum = static_cast<opmath_t>(momentum);
  s.one_minus_dampening = static_cast<opmath_t>(1.0 - dampening);
  s.weight_decay = static_cast<opmath_t>(weight_decay);
  s.has_grad_scale = has_grad_scale;
  s.has_momentum = has_momentum;
  s.nesterov = nesterov;
  s.maximize = maximize;
  s.decoupled_weight_decay = decoupled_weight_decay;
  s.first_step = first_step;
  return s;
}

// The op's optional scalar tensors, as raw pointers (nullptr when absent): host pointers for the CPU
// kernel, device pointers for the CUDA kernel, which both read them with read_tensor_scalars below.
struct SgdwTensorScalars {
  const void* lr = nullptr;  // the caller's lr tensor: float or double (lr_is_double)
  bool lr_is_double = false;
  // Rows of [lr, momentum, dampening, weight_decay]: one row (compiled steps), or one per member.
  const double* hyper = nullptr;
  bool per_member = false;  // hyper has a row per member: a member with momentum 0 leaves its buffer alone
  const float* grad_scale = nullptr;
};

// Replaces the float arguments in `s` by the tensors given: `member`'s row of hyper first, then lr_tensor
// over its lr, as ops/library.py documents. Each double is cast to opmath_t as a float argument is, and
// 1 - dampening is taken in double, so a member's scalars are exactly those of a launch of its own.
template <typename opmath_t>
FASTTRICK_HOST_DEVICE void read_tensor_scalars(SgdwScalars<opmath_t>& s, const SgdwTensorScalars& t,
                                               int64_t member = 0) {
  if (t.hyper != nullptr) {
    const double* row = t.hyper + 4 * member;
    s.lr = static_cast<opmath_t>(row[0]);
    s.momentum = static_cast<opmath_t>(row[1]);
    s.one_minus_dampening = static_cast<opmath_t>(1.0 - row[2]);
    s.weight_decay = static_cast<opmath_t>(row[3]);
    if (t.per_member) {
      s.has_momentum = s.has_momentum && row[1] != 0.0;
    }
  }
  if (t.lr != nullptr) {
    s.lr = t.lr_is_double ? static_cast<opmath_t>(*static_cast<const double*>(t.lr))
                          : static_cast<opmath_t>(*static_cast<const float*>(t.lr));
  }
  if (t.grad_scale != nullptr) {
    s.grad_scale = static_cast<opmath_t>(*t.grad_scale);
  }
}

// Updates p and b in place and returns the (unscaled) gradient for the optional write-back.
// V is the value type: opmath_t itself, or a SIMD register of it (Simd in sgdw_cpu.cpp);
// V(x) broadcasts a scalar. `b` is not read on a first step, so an uninitialised buffer is fine there.
template <typename V, typename opmath_t>
FASTTRICK_HOST_DEVICE V sgdw_update(V& p, V g, V& b, const SgdwScalars<opmath_t>& s) {
  if (s.has_grad_scale) {
    g = g / V(s.grad_scale);
  }
  V d = s.maximize ? -g : g;
  if (s.weight_decay != opmath_t(0)) {
    if (s.decoupled_weight_decay) {
      p = p * V(opmath_t(1) - s.lr * s.weight_decay);
    } else {
      d = d + V(s.weight_decay) * p;
    }
  }
  if (s.has_momentum) {
    b = s.first_step ? d : V(s.momentum) * b + V(s.one_minus_dampening) * d;
    d = s.nesterov ? d + V(s.momentum) * b : b;
  }
  p = p - V(s.lr) * d;
  return g;
}

}  // namespace fasttrick
