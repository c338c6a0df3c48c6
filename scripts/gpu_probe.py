#!/usr/bin/env python3
"""Time one model forward per new batch shape with PyTorch's default attention kernels and
with the fast backend's choice (evals.backends.device.attention_kernels), side by side.

Packed log-likelihood batches (explicit 4-D mask) and decoding steps (a 2-D mask over a
growing KV cache) both bring a new shape at almost every call; a kernel that builds a plan
per shape pays for it every time. Prints milliseconds per call and the top GPU kernels.

  python scripts/gpu_probe.py --model random:phi-2 --device cuda --out results/bench/gpu_probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evals.backends.device import attention_kernels  # noqa: E402
from evals.backends.kv_cache import out_cache  # noqa: E402
from evals.random_model import build_random  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def packed_forward_ms(model, device, rows: int, T: int) -> float:
    """One base-model forward of `rows` x `T` tokens with an explicit causal 4-D float mask."""
    dtype = model.dtype
    ids = torch.randint(0, 1000, (rows, T), device=device)
    pos = torch.arange(T, device=device).expand(rows, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(rows, 1, T, T, dtype=dtype, device=device).masked_fill_(~causal, torch.finfo(dtype).min)
    sync(device)
    t = time.perf_counter()
    model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    sync(device)
    return (time.perf_counter() - t) * 1e3


def decode_steps_ms(model, device, rows: int, prompt: int, steps: int) -> list[float]:
    """Per-step milliseconds of greedy decoding with a KV cache and a 2-D mask (left padding)."""
    ids = torch.randint(0, 1000, (rows, prompt), device=device)
    mask = torch.ones(rows, prompt, dtype=torch.long, device=device)
    mask[: rows // 2, :3] = 0  # some left padding, as in a real batch
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    cache = out_cache(out)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    times = []
    for _ in range(steps):
        nxt = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=nxt, attention_mask=mask, use_cache=True, logits_to_keep=1, **{kw: cache})
        out.logits[:, -1].argmax(-1).tolist()  # the real loop reads the tokens back each step
        times.append((time.perf_counter() - t) * 1e3)
    return times


def top_kernels(model, device, rows: int, T: int, n: int = 8) -> list[tuple[str, float]]:
    """(op or kernel name, ms) of the busiest CPU ops and GPU kernels in one packed forward."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        packed_forward_ms(model, device, rows, T)
    out = []
    keys = ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else [])
    for key in keys:  # CPU side first (plan building, launches), then GPU kernels
        avg = sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0))
        out += [(f"{key[5:8]} {e.key[:90]}", round(getattr(e, key, 0) / 1e3, 2)) for e in avg[:n]]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:phi-2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, _tok, info = build_random(args.model.split(":", 1)[1], dtype, device)
    report = {"model": info["id"], "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "rows": args.rows, "packed_ms": {}, "decode_ms": {}, "top_kernels": {}}
    shapes = [197, 203, 211, 229, 197, 203]  # the last two repeat earlier shapes
    with torch.inference_mode():
        packed_forward_ms(model, device, 4, 64)  # CUDA context, kernels loaded
        for label, ctx in (("default", None), ("fast", attention_kernels)):
            with ctx(device) if ctx else contextlib.nullcontext():
                ms = [round(packed_forward_ms(model, device, args.rows, T), 1) for T in shapes]
                dec = [round(x, 1) for x in decode_steps_ms(model, device, 64, 600, 12)]
                kern = top_kernels(model, device, args.rows, 233)
            report["packed_ms"][label] = dict(zip([f"T{T}#{i}" for i, T in enumerate(shapes)], ms))
            report["decode_ms"][label] = dec
            report["top_kernels"][label] = kern
            print(f"[{label}] packed forward ms, {args.rows} rows, T={shapes}: {ms}", flush=True)
            print(f"[{label}] decode step ms, 64 rows, ~600 KV: {dec}", flush=True)
            for name, t in kern:
                print(f"    {t:>9.2f} ms  {name}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
