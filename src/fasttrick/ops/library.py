"""The op schema, defined once, and its fake (meta) implementation for torch.compile.

`fasttrick::sgdw_` gets its CPU and CUDA kernels from the C++ extensions (csrc/); `fasttrick::sgdw_triton_`
has the same schema and runs the Triton kernel. Both mutate params, grads (AMP write-back) and buffers
in place and return nothing, so the fake implementation has nothing to compute: it only lets
torch.compile trace a step without a graph break.
"""

from __future__ import annotations

import torch

# Argument order is the same for every backend function in ops/ (see ops/dispatch.py).
SGDW_SCHEMA = (
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, Tensor lr, Tensor? grad_scale, "
    "Tensor? found_inf, float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
    "bool decoupled_weight_decay, bool first_step) -> ()"
)

_library = torch.library.Library("fasttrick", "DEF")  # kept alive for the life of the process
for _name in ("sgdw_", "sgdw_triton_"):
    _library.define(_name + SGDW_SCHEMA)

    @torch.library.register_fake(f"fasttrick::{_name}")
    def _sgdw_fake(
        params,
        grads,
        momentum_buffers,
        lr,
        grad_scale,
        found_inf,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        decoupled_weight_decay,
        first_step,
    ) -> None:
        return None
