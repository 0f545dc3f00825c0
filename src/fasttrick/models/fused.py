"""K independent CIFAR ResNet-18s trained as one network (horizontal fusion, HFTA: arXiv 2102.02344).

Every kernel of the fused model is K times larger than a single model's and there are K times fewer
launches, which fills a GPU that one small 32x32 ResNet-18 leaves under-used.

Layout contract (what per-member optimizers and checkpoints rely on):

- ``list(fused.parameters())`` matches ``list(ResNet18(width=width).parameters())`` one to one, in order,
  and ``fused.state_dict()`` has the plain model's keys, in order;
- every parameter and buffer splits along dim 0 into K equal slices: member k's tensor is
  ``t.unflatten(0, (K, -1))[k]``, which already has the plain tensor's shape except for
  ``num_batches_tracked`` (a [K] counter, one per member; the plain one is a 0-dim tensor, ``.view(())``).
  Dim 0 is the outermost dim in the contiguous and channels_last layouts alike, so the slice is a view.

Kernels: ``kernels="grouped"`` runs each layer of all members as one kernel (grouped convolutions, BatchNorm
over K*C channels, a batched matmul head), the horizontal fusion that fills a GPU. ``kernels="per_member"``
runs the members one after another through a plain ResNet18 over views of their slices
(``torch.func.functional_call``): the same dense kernels a separate run launches, so each member's numbers
are bit-identical to its separate run's, while parameters, gradients and the optimizer step stay fused. It
suits CPUs, where oneDNN's grouped convolution takes up to 1.9x the time of the same work as dense
convolutions (benchmarks/test_bench_arrays.py, 8 channels at 32x32, 2-core AVX2). ``"auto"`` (the default)
picks per_member for CPU inputs and grouped elsewhere.

Initialisation: the modules are ``nn.Conv2d`` (grouped), ``nn.BatchNorm2d`` and ``nn.Linear`` subclasses, so
``reset_parameters`` gives every member a fresh draw from the plain model's distributions. To give member k
exactly the weights a separate run starts from, initialise a plain ResNet18 as that run does and
:meth:`FusedResNet18.load_member` it.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .members import MemberLinear
from .resnet import ResNet18, stem_and_stages


class FusedResNet18(nn.Module):
    """``members`` ResNet18(num_classes, width) models as one network; they all see the same input batch.

    forward: images [N, 3, H, W] -> logits [N, K, num_classes]; member k's logits are ``[:, k]``.
    Train the members independently with :func:`member_cross_entropy` (the sum of the member means: each
    member's gradients are those of its own mean loss)."""

    def __init__(
        self,
        members: int,
        num_classes: int = 10,
        width: float = 1.0,
        kernels: Literal["auto", "grouped", "per_member"] = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(members, int) or isinstance(members, bool) or members < 1:
            raise ValueError(f"members must be a positive int, got {members!r}")
        if kernels not in ("auto", "grouped", "per_member"):
            raise ValueError(f"kernels must be 'auto', 'grouped' or 'per_member', got {kernels!r}")
        self.members = members
        self.kernels = kernels
        self.num_classes = num_classes
        self.width = width
        self.stem, self.stages, features = stem_and_stages(width, members)
        self.head = MemberLinear(features, num_classes, members)
        with torch.device("meta"):
            plain = ResNet18(num_classes, width)
        self._plain_shapes = {name: t.shape for name, t in plain.state_dict().items()}
        # The per_member path's module code, its tensors swapped for member views at each call; kept out of
        # the registered submodules (not a parameter holder, not moved by .to(), not in state_dict).
        self.__dict__["_plain"] = plain

    def forward(self, x: Tensor) -> Tensor:
        if self.runs_per_member(x.device):
            return torch.stack([self._member_forward(k, x) for k in range(self.members)], dim=1)
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def runs_per_member(self, device: torch.device) -> bool:
        """Whether inputs on ``device`` take the per_member kernels (see the module's docstring)."""
        return self.kernels == "per_member" or (self.kernels == "auto" and device.type == "cpu")

    def _member_forward(self, member: int, x: Tensor) -> Tensor:
        """Member ``member``'s logits [N, classes] from the plain model's code over views of its slices: the
        gradients flow into the fused parameters' slices, and BatchNorm updates the member's running
        statistics and counter in place through the views."""
        plain: ResNet18 = self.__dict__["_plain"]
        plain.train(self.training)
        tensors = {
            name: self._member_slice(name, tensor, member)
            for name, tensor in chain(self.named_parameters(), self.named_buffers())
        }
        return functional_call(plain, tensors, (x,))

    # -- members ------------------------------------------------------------------------------

    def _member_slice(self, name: str, tensor: Tensor, member: int) -> Tensor:
        return tensor.unflatten(0, (self.members, -1))[member].view(self._plain_shapes[name])

    def _check_member(self, member: int) -> None:
        if not isinstance(member, int) or isinstance(member, bool) or not 0 <= member < self.members:
            raise IndexError(f"member must be an int in [0, {self.members}), got {member!r}")

    def member_views(self, member: int) -> list[Tensor]:
        """Views into the fused parameters holding ``member``'s weights, each with the plain ResNet18
        parameter's shape, in ``ResNet18.parameters()`` order. They are detached leaf tensors (what an
        optimizer over one member takes); writing to one writes the fused model. A member's gradients are
        the same slices of the fused ``p.grad``: ``p.grad.unflatten(0, (K, -1))[k]``."""
        self._check_member(member)
        return [self._member_slice(name, p.detach(), member) for name, p in self.named_parameters()]

    def member_state_dict(self, member: int) -> dict[str, Tensor]:
        """A plain ResNet18 state_dict of ``member`` (same keys, shapes and dtypes; detached copies)."""
        self._check_member(member)
        return {name: self._member_slice(name, t, member).detach().clone() for name, t in self.state_dict().items()}

    def load_member(self, member: int, state_dict: Mapping[str, Tensor]) -> None:
        """Writes a plain ResNet18 state_dict (of this width and num_classes) into ``member``; the other
        members are not touched. Strict: every key of a plain ResNet18 and nothing else, each of its shape."""
        self._check_member(member)
        missing = [name for name in self._plain_shapes if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._plain_shapes]
        wrong_shape = [
            f"{name}: {tuple(state_dict[name].shape)}, expected {tuple(shape)}"
            for name, shape in self._plain_shapes.items()
            if name in state_dict and tuple(state_dict[name].shape) != tuple(shape)
        ]
        if missing or unexpected or wrong_shape:
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unexpected:
                problems.append(f"unexpected keys {unexpected}")
            if wrong_shape:
                problems.append(f"wrong shapes [{'; '.join(wrong_shape)}]")
            raise ValueError(
                f"load_member({member}): not a ResNet18(num_classes={self.num_classes}, width={self.width}) "
                f"state_dict: {', '.join(problems)}"
            )
        with torch.no_grad():
            for name, target in self.state_dict().items():
                self._member_slice(name, target, member).copy_(state_dict[name])


def member_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    per_member: bool = False,
) -> Tensor:
    """Each member's cross-entropy over the batch, [K], for logits [N, K, C] and targets [N] (in the logits'
    dtype: cast low-precision logits with ``.float()`` first, as for a single model): the mean (default)
    or the sum over the batch. The mean's ``.sum()`` is the array's loss: member k's gradients are those of
    its own mean loss.

    ``per_member=True`` computes each member's loss by its own ``F.cross_entropy`` call, the one a separate
    run makes, so that loss and gradients are bit-identical to its (with FusedResNet18's per_member kernels);
    False, one call for all members (one launch whatever K, and a compiled graph that does not grow with K),
    equal to within summation order."""
    if logits.dim() != 3 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [N, K, classes] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if per_member:
        return torch.stack(
            [
                F.cross_entropy(logits[:, k], targets, label_smoothing=label_smoothing, reduction=reduction)
                for k in range(logits.shape[1])
            ]
        )
    per_image = F.cross_entropy(
        logits.transpose(1, 2),
        targets[:, None].expand(-1, logits.shape[1]),
        label_smoothing=label_smoothing,
        reduction="none",
    )
    return per_image.mean(0) if reduction == "mean" else per_image.sum(0)
