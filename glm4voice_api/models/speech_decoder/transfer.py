"""Host-to-device copies that do not stall the GPU queue.

Why: a plain CPU -> CUDA copy (`torch.tensor(values, device=cuda)`, `t.to(cuda)`) is a copy followed by a stream
synchronisation, so the host waits until everything queued before it has run. Inside a decoder pass that empties
the GPU queue several times per pass; with vLLM in another process on the same GPU, each empty queue hands the GPU
to the LLM's context for a time slice, and the pass stretches far beyond its own kernels' time. These copies go
through pinned memory with `non_blocking=True` instead: queued in order, no host wait (the caching host allocator
keeps the pinned buffer alive until the copy has run).
"""

from __future__ import annotations

import torch

__all__ = ["lengths_tensor", "to_device"]


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` on `device` (and `dtype`), without a stream synchronisation when it comes from the host to a GPU."""
    if t.device != device and t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def lengths_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of `values` on `device` (row lengths for masks), copied without a synchronisation."""
    return to_device(torch.tensor(values, dtype=torch.long), device)
