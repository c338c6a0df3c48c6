"""Memory: what this process may still allocate, and whether a model's weights fit before it loads.

A model whose weights do not fit in the CPU's memory is not refused by the allocator: Linux grants
the pages, then its out-of-memory killer ends the process ("Killed", exit 137), which no Python
code can catch. `check_weights_fit` counts the weights on the meta device (no memory) before the
load and refuses, in one line, a load that needs more than the memory available (`load_bytes`,
a lower bound). A checkpoint already in the requested dtype is mapped from its file, so it might
load past the memory, but every forward pass would then read its weights from disk again: it is
refused too. Anything it cannot count (a quantised checkpoint, a config it cannot read) is let
through to the load, which says what went wrong. Several processes of one machine (CPU data
parallel) load their copies at once: their need is counted together, against the least memory
any of them measured before any loaded (evals/distributed.py: `shared_memory`).
"""

from __future__ import annotations

import os
from pathlib import Path

from evals.errors import ModelError

GIB = 1 << 30
UNLIMITED = 1 << 60  # cgroup limits at or above this mean "no limit"
# a GGUF file holds at least 1.5 bits per weight (IQ1_S, the smallest quantisation): an upper
# bound on its weight count without parsing it (parsing takes seconds: the tokenizer is in it)
GGUF_MIN_BITS_PER_WEIGHT = 1.5


def available_memory_bytes(cgroup_root: str = "/sys/fs/cgroup", proc: str = "/proc") -> int | None:
    """Memory this process can still get: MemAvailable in /proc/meminfo, lowered to what its cgroup's
    limit leaves (v2 memory.max, v1 memory.limit_in_bytes, less the usage that is not reclaimable
    file cache) in a container; None where neither is readable."""
    found = [v for v in (_meminfo_available(proc), _cgroup_available(Path(cgroup_root), proc)) if v is not None]
    return min(found) if found else None


def _meminfo_available(proc: str) -> int | None:
    try:
        with open(f"{proc}/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2: no limit) -> None


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_available(root: Path, proc: str) -> int | None:
    """limit - (usage - inactive file cache) of this process's memory cgroup, or None (no limit or no cgroup)."""
    try:
        lines = Path(f"{proc}/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.strip("/")
        if controllers == "":  # v2
            files = ("memory.max", "memory.current", "memory.stat", "inactive_file")
            bases = [root / path, root] if path else [root]
        elif "memory" in controllers.split(","):  # v1
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file")
            bases = [root / "memory" / path, root / "memory"] if path else [root / "memory"]
        else:
            continue
        for base in bases:  # inside a container the cgroup's own folder is often mounted as the root
            limit, usage = _read_int(base / files[0]), _read_int(base / files[1])
            if limit is None or usage is None:
                continue
            if limit >= UNLIMITED:
                break
            return max(0, limit - max(0, usage - _inactive_file(base / files[2], files[3])))
    return None


def weight_count(config, trust_remote_code: bool = False) -> int | None:
    """Parameters of the causal LM `config` describes, built on the meta device (no memory, no
    weights read); None if the config is quantised or cannot be built."""
    import torch
    from transformers import AutoModelForCausalLM

    if getattr(config, "quantization_config", None):
        return None  # the checkpoint's own format decides its size
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - an unknown architecture is the load's to report
        return None
    return sum(p.numel() for p in model.parameters())


def available_on(device: str) -> int | None:
    """Bytes free for new tensors on `device`: the GPU's free memory on CUDA, else the CPU's available memory."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0] if torch.cuda.is_available() else None
    return available_memory_bytes()


def _dtype(dtype):
    """A torch dtype from its name or itself."""
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def gguf_surely_fits(path: str, dtype, available: int | None, copies: int = 1) -> bool:
    """True if a GGUF file loads into `dtype` (a torch dtype or its name) within `available` bytes
    even at the densest quantisation, in each of `copies` processes at once (its size tells;
    reading its config takes seconds)."""
    bound = load_bytes(int(os.path.getsize(path) * 8 / GGUF_MIN_BITS_PER_WEIGHT), _dtype(dtype).itemsize, gguf=True,
                       copies=copies)
    return not available or bound <= available


def load_bytes(count: int, itemsize: int, gguf: bool = False, copies: int = 1, mapped: bool = False) -> int:
    """Bytes a CPU load of `count` weights into a dtype of `itemsize` bytes needs, at least (a lower
    bound, so that a refusal is sure): the weights; for a GGUF file, dequantised through float32
    tensors, 2 more bytes per weight. Measured in a memory cgroup on SmolLM2-135M's 134.5M
    weights, loaded and run on 5 ARC-Easy questions (the memory already used at the check
    subtracted): its GGUF file needed 770-820 MiB as float32 (count x 6: 770 MiB) and 520-570 MiB
    as bfloat16 (count x 4: 513 MiB); a bfloat16 folder loaded as float32 needed 670-770 MiB
    (count x 4: 513 MiB), a float32 folder as float32 under 420 MiB (its file is mapped, not copied).

    `copies` processes loading at once on one machine (CPU data parallel) each keep their own
    weights in the end, one load at its peak: copies - 1 more times the weights, unless they are
    `mapped` from one file (a checkpoint already in the dtype), whose pages the processes share."""
    one = count * (itemsize + (2 if gguf else 0))
    return one if mapped else one + (copies - 1) * count * itemsize


def checkpoint_mapped(config, dtype) -> bool:
    """Whether a checkpoint `config` describes may be mapped from its file when loaded in `dtype`:
    it is stored in that dtype, or its config does not say (then the smaller need is assumed)."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return stored is None or _dtype(stored) == _dtype(dtype)


def check_weights_fit(config, where: str, device: str, dtype, trust_remote_code: bool = False,
                      available: int | None = None, gguf: bool = False, copies: int = 1,
                      mapped: bool | None = None) -> None:
    """Raise ModelError, one line naming a dtype (or fewer processes) that would fit, if loading the
    weights `config` describes in `dtype` (a torch dtype or its name) needs more than the memory
    available on `device` (load_bytes on the CPU, for a GGUF file if `gguf`, in each of `copies`
    processes of this machine, sharing the file's pages if `mapped`, by default when the
    checkpoint is in `dtype`; the weights on a GPU); `available` overrides the measurement;
    weights that cannot be counted pass."""
    available = available_on(device) if available is None else available
    if not available:
        return
    itemsize = _dtype(dtype).itemsize
    count = weight_count(config, trust_remote_code)
    if count is None:
        return
    cuda = device.startswith("cuda")
    copies = 1 if cuda else max(1, copies)

    def need(dt, n: int = copies) -> int:  # on a GPU only the converted weights land (the load runs on the CPU)
        size = _dtype(dt).itemsize
        if cuda:
            return count * size
        shared = (not gguf and checkpoint_mapped(config, dt)) if mapped is None else mapped
        return load_bytes(count, size, gguf, n, shared)

    total = need(dtype)
    if total <= available:
        return
    half, one = need("bfloat16"), need(dtype, 1)
    hints = [f"--dtype bfloat16 ({half / GIB:.1f} GiB)"] if itemsize > 2 and half <= available else []
    if copies > 1 and one <= available:
        hints.append(f"fewer processes per machine ({one / GIB:.1f} GiB for one)")
    name = str(_dtype(dtype)).removeprefix("torch.")
    at_once = f" in {copies} processes at once" if copies > 1 else ""
    raise ModelError(f"{where} needs {total / GIB:.1f} GiB to load its {count / 1e9:.2f}B weights in {name}{at_once}, "
                     f"but {device} has {available / GIB:.1f} GiB available: use {''.join(h + ', ' for h in hints)}"
                     "a smaller model or a machine with more memory")
