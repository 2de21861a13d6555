"""Which accelerator to run on: CUDA when available, then Apple MPS, else the CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' picks the best available; an explicit choice that is not available is an error."""
    requested = (requested or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if requested == "mps" and not has_mps:
        raise ValueError("--device mps was asked for, but Apple MPS is not available here; use --device cpu or auto")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device '{requested}'; use auto, cpu, cuda or mps") from None


def describe(device: torch.device, threads: int | None = None) -> str:
    """The device in words; a CPU with its torch threads (this process's now, unless `threads` is given)."""
    if device.type == "cuda":
        return f"CUDA GPU ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    n = torch.get_num_threads() if threads is None else threads
    return f"CPU ({n} thread{'s' if n != 1 else ''})"
