"""FusedSGDW's param groups with members (``members=K``): the per-member table of lr, momentum, dampening
and weight decay, and its checks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .checkpoint import MEMBER_TABLE

# What each member of a group with members has of its own: the columns of its member table, in order.
MEMBER_KEYS = ("lr", "momentum", "dampening", "weight_decay")
# The hyper-parameters that must not be negative, with the name torch.optim.SGD's errors give them.
_NON_NEGATIVE = {"lr": "learning rate", "momentum": "momentum value", "weight_decay": "weight_decay value"}


def _install_member_table(group: dict[str, Any], members: int, table: Tensor | None = None) -> None:
    """Writes the group's four values (numbers, K-sequences or tensors as given, or lists as loaded: checked)
    into `table` (float64 [4, K], one row per key; a new one on the params' device if None), and puts views
    of its rows under the four keys."""
    rows = _member_rows(group, members)
    values = torch.tensor([rows[key] for key in MEMBER_KEYS], dtype=torch.float64)
    if table is None:
        table = values.to(_members_device(group["params"]))
    else:
        _copy_from_host(table, values)
    group[MEMBER_TABLE] = table
    for row, key in enumerate(MEMBER_KEYS):
        group[key] = table[row]


def _member_columns(group: dict[str, Any]) -> list[Tensor]:
    """The group's four [K] tensors, as the step reads them (each key's own: the table's view, or a tensor
    the caller put there). Numbers assigned to a key since go into the table, checked, and the key gets its
    view back; a table whose params moved to another device follows them."""
    members = group["members"]
    table = group[MEMBER_TABLE]
    device = _members_device(group["params"])
    if table.device != device:  # once, after the params moved (model.to(device) after building the optimizer)
        table = group[MEMBER_TABLE] = table.to(device)
        for row, key in enumerate(MEMBER_KEYS):
            if isinstance(group[key], Tensor):
                table[row].copy_(group[key])
                group[key] = table[row]
    columns = []
    for row, key in enumerate(MEMBER_KEYS):
        value = group[key]
        if not isinstance(value, Tensor):
            values = _member_floats(key, value, members)
            _check_member_values(key, values, group["nesterov"])
            _copy_from_host(table[row], torch.tensor(values, dtype=torch.float64))
            value = group[key] = table[row]
        elif value.shape != (members,) or value.device != device or not value.is_floating_point():
            raise ValueError(
                f"FusedSGDW: {key} of a group of {members} members must be a floating point tensor of shape "
                f"({members},) on {device}, got {value.dtype} {tuple(value.shape)} on {value.device}; write the "
                f"values into it in place (opt.set_member, group['{key}'][k] = value) or assign numbers"
            )
        columns.append(value.to(torch.float64))
    return columns


def _copy_from_host(dst: Tensor, values: Tensor) -> None:
    """dst <- values (a CPU tensor) without waiting for the device: from pinned memory, which torch's
    host allocator keeps until the copy has run (from pageable memory the driver may sync the stream)."""
    if dst.is_cuda:
        values = values.pin_memory()
    dst.copy_(values, non_blocking=True)


def _check_members(group: dict[str, Any]) -> int:
    """The group's member count, checked against its params (before any table is built)."""
    members = group["members"]
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"FusedSGDW: members must be an int >= 1, got {members!r}")
    if members == 1:
        return 1
    dtensor = _dtensor_class()
    for index, p in enumerate(group["params"]):
        if isinstance(p, dtensor):
            raise ValueError(
                f"FusedSGDW: param {index} is a DTensor; a group with members takes plain tensors (a shard of dim 0 "
                "would not hold whole members)"
            )
        if p.dim() == 0 or p.shape[0] % members != 0:
            raise ValueError(
                f"FusedSGDW: param {index} of shape {tuple(p.shape)} cannot hold {members} members: every param of "
                f"a group with members=K stacks the K members along dim 0, so dim 0 must be a multiple of {members}"
            )
    _members_device(group["params"])
    return members


def _members_device(params: list[Tensor]) -> torch.device:
    """The one device of a group with members (its member table lives there)."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"FusedSGDW: a group with members holds params of one device (its member table lives there), got "
            f"{sorted(map(str, devices))}; make one group per device"
        )
    return devices.pop() if devices else torch.device("cpu")


def _member_rows(group: dict[str, Any], members: int) -> dict[str, list[float]]:
    """Each of the four values of `group` as `members` floats, checked as torch.optim.SGD checks them."""
    rows = {key: _member_floats(key, group[key], members) for key in MEMBER_KEYS}
    for key, values in rows.items():
        _check_member_values(key, values, group["nesterov"])
    return rows


def _member_floats(key: str, value: Any, members: int) -> list[float]:
    """`members` floats from a number, a sequence of `members` numbers, or a tensor of 1 or `members` values
    (read on the host)."""
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.numel() not in (1, members):
            raise ValueError(
                f"FusedSGDW: {key} for {members} members takes one value or {members}, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        value = value.tolist() if value.numel() == members and value.dim() == 1 else value.item()
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != members:
            raise ValueError(
                f"FusedSGDW: {key} has {len(value)} values for {members} members; give one number (every member) "
                f"or {members}"
            )
        return [_number(key, v) for v in value]
    return [_number(key, value)] * members


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"FusedSGDW: {key} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


def _check_member_values(key: str, values: list[float], nesterov: bool, first_member: int = 0) -> None:
    """torch.optim.SGD's checks, member by member (`first_member`: the index of values[0])."""
    for k, value in enumerate(values, start=first_member):
        if key in _NON_NEGATIVE and not value >= 0.0:
            raise ValueError(f"Invalid {_NON_NEGATIVE[key]}: {value} (member {k})")
        if nesterov and ((key == "momentum" and value <= 0) or (key == "dampening" and value != 0)):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening (member {k}: {key} {value})")


def _dtensor_class() -> type | tuple[()]:
    """DTensor, or () (isinstance of nothing) in a process that never imported torch.distributed.tensor
    (it takes seconds to import, and without it there is no DTensor)."""
    module = getattr(torch.distributed, "tensor", None)
    return () if module is None else module.DTensor
