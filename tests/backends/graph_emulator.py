"""A CPU stand-in for a CUDA graph, for testing code meant to be captured (graph_decode.py).

A CUDA graph records the kernels a function launches during capture, without running them,
and each replay launches the same kernels with the same arguments on the same memory. So a
value the host decided during capture (a Python index, a shape, a tensor built from a list) is
baked in, and the host may not read the device within the capture. EmulatedGraph does the same
with ATen operations on the CPU: capture runs the function under a dispatch mode that records
every operation with its arguments and outputs, then restores every tensor it wrote in place
(a CUDA capture runs nothing); a replay re-runs the recorded operations on the recorded tensors,
copying each result into the tensor the capture produced (the graph's memory). What a CUDA
capture refuses raises CaptureSyncError: reading the device on the host (`.item()`, `bool(t)`),
operations whose output size depends on device data (nonzero, boolean indexing, masked_select,
unique, repeat_interleave without output_size) and tensors built from host lists.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# operations that only allocate (their contents are garbage until written: nothing to replay)
_ALLOC = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"}
# operations that read the device on the host under CUDA: a value (.item(), bool(t)) or an
# output size that depends on the data (nonzero, masked_select, unique, repeat_interleave without
# its output size); a capture raises on them ("operation not permitted when stream is capturing")
_SYNC = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "_unique", "_unique2",
         "unique_dim", "unique_consecutive", "unique_dim_consecutive"}
# a tensor built from host data (torch.tensor(list)): on CUDA a copy from pageable host memory,
# which a capture refuses ("Cannot copy between CPU and CUDA tensors during CUDA graph capture");
# only for tensors of one dimension or more, as a 0-d one may be a scalar a kernel takes by value
_HOST_DATA = {"lift_fresh", "lift_fresh_copy"}


class CaptureSyncError(RuntimeError):
    """The captured function read a device value on the host."""


def _kind(func) -> str:
    """'view' (aliases an input, nothing to run), 'write' (mutates an argument), 'alloc' or 'op'."""
    name = func._schema.name.split("::")[-1]
    if name in _ALLOC:
        return "alloc"
    if any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments):
        return "write"
    if any(r.alias_info is not None for r in func._schema.returns):
        return "view"
    return "op"


def _aliases(out, args) -> bool:
    """Whether every tensor of `out` shares memory with a tensor among `args`."""
    ins = {t.untyped_storage().data_ptr() for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)}
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return all(t.untyped_storage().data_ptr() in ins for t in outs)


def _host_sized(name: str, args, kwargs) -> bool:
    """Whether an operation's output size depends on device data: indexing by a boolean mask
    (t[mask], t[mask] = v: a nonzero inside) or repeat_interleave by a tensor of repeats without
    its output_size."""
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
    if name == "repeat_interleave":
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return any(t.dim() > 0 for t in tensors[-1:]) and kwargs.get("output_size") is None and not any(
            isinstance(a, int) for a in args[1:])
    return False


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list = []
        self.saved: list = []  # (tensor written in place, its contents before the capture)
        self._seen: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _SYNC or _host_sized(name, args, kwargs):
            raise CaptureSyncError(f"{func} reads a device value on the host during capture")
        if name in _HOST_DATA and args[0].dim() > 0:  # a 0-d one may be a scalar (x[m] = 0.), passed by value
            raise CaptureSyncError(f"{func} copies host data to the device during capture")
        kind = _kind(func)
        if kind == "write":
            for a, t in zip(func._schema.arguments, list(args) + [kwargs.get(x.name) for x in func._schema.arguments[len(args):]]):
                if a.alias_info is not None and a.alias_info.is_write and isinstance(t, torch.Tensor):
                    if id(t) not in self._seen:
                        self._seen.add(id(t))
                        self.saved.append((t, t.clone()))
        out = func(*args, **kwargs)
        if kind == "view" and not _aliases(out, args):  # e.g. aten.to converting: a copy
            kind = "op"
        self.ops.append((func, args, kwargs, out, kind))
        return out


class EmulatedGraph:
    """capture(fn) records fn's operations (running nothing, as far as the caller can see);
    replay() re-runs them on the same tensors."""

    def __init__(self):
        self.ops: list = []

    def capture(self, fn) -> None:
        rec = _Recorder()
        try:
            with rec:
                fn()
        finally:  # a capture that fails has run nothing either
            for t, before in reversed(rec.saved):
                t.copy_(before)
        self.ops = rec.ops

    def replay(self) -> None:
        for func, args, kwargs, out, kind in self.ops:
            if kind in ("view", "alloc"):
                continue
            res = func(*args, **kwargs)
            if kind == "op":
                for dst, src in zip(tree_flatten(out)[0], tree_flatten(res)[0]):
                    if isinstance(dst, torch.Tensor):
                        dst.copy_(src)


def emulated_capture(step, device, pool):
    """graph_decode.capture's stand-in on the CPU: `step` captured in an EmulatedGraph."""
    graph = EmulatedGraph()
    graph.capture(step)
    return graph.replay
