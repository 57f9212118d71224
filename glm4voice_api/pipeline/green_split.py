"""The GPU's SMs split between the speech decoder and the LLM (CUDA green contexts), inside vLLM's model process.

Why: with the decoder in vLLM's process (the default on one GPU), a pass and the LLM's steps share every SM. The
LLM's large GEMMs fill the GPU and the decoder's thousands of small kernels queue behind them, so both stretch: at
32 streams a first chunk's pass took 56-136 ms against 33 ms alone and the LLM's first 23 tokens 323-387 ms against
189 (H100, bench/results/GPU.md sessions 30-31). A high-priority stream only orders launches. A green context gives
its streams a fixed set of SMs: the decoder keeps `sms` of them, the LLM the rest. Nothing on the device changes
(no MPS, no mode), and both keep one CUDA context's memory.

`speech_decoder.green_sms` (0: off, the default) is a decoder rule (`decoder_rules.py`), so one warm server can
compare splits: each thread that runs GPU work (the decoder's, the engine's loop) takes up its new stream between
its own steps (`StreamSlot`), after the work on its old stream has finished. `bench/green_probe.py` measures the
split without a server.

Measured (H100, 2026-12-07, bench/results/GPU.md session 32): off by default, because memory bandwidth, not SMs, is
what the two share. With 64 SMs its own a lone first chunk's pass still took 44.7 ms beside a 9B-shaped decode load
(83.7 shared, 25.1 alone), the load ran as fast on 68 SMs as on 116 and ~5% slower than unsplit; on the server
(ABBA, 32 streams) the passes were shorter, the LLM 4-7% slower, first audio the same and the overloads worse (95.5
and 98.8% gap-free against 99.6 and 100%).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_RES_BYTES = 256  # CUdevResource is 144 bytes in CUDA 12 (type, 92 bytes padding, 48-byte union); room for more
_SM_COUNT_OFFSET = 96
_CU_DEV_RESOURCE_TYPE_SM = 1
_CU_GREEN_CTX_DEFAULT_STREAM = 1
_CU_STREAM_NON_BLOCKING = 1


class GreenSplit:
    """Two green contexts on one device: `first` SMs and the remaining ones, each with one stream for torch.

    Made through the driver API (ctypes): torch's own wrapper differs between versions. Contexts live as long as the
    process (a split is made once per size, `green_streams`)."""

    def __init__(self, first_sms: int, device: int = 0, priority: int = 0) -> None:
        self.cu = ctypes.CDLL("libcuda.so.1")
        self._check(self.cu.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self._check(self.cu.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        whole = ctypes.create_string_buffer(_RES_BYTES)
        self._check(self.cu.cuDeviceGetDevResource(dev, whole, _CU_DEV_RESOURCE_TYPE_SM), "cuDeviceGetDevResource")
        part, rest = ctypes.create_string_buffer(_RES_BYTES), ctypes.create_string_buffer(_RES_BYTES)
        groups = ctypes.c_uint(1)
        self._check(
            self.cu.cuDevSmResourceSplitByCount(part, ctypes.byref(groups), whole, rest, 0, first_sms),
            "cuDevSmResourceSplitByCount",
        )
        self.sms = (self._sm_count(part), self._sm_count(rest))
        self.streams = tuple(self._stream(dev, res, device, priority) for res in (part, rest))

    @staticmethod
    def _sm_count(res: ctypes.Array) -> int:
        return int.from_bytes(bytes(res[_SM_COUNT_OFFSET : _SM_COUNT_OFFSET + 4]), "little")

    def _stream(self, dev: ctypes.c_int, res: ctypes.Array, device: int, priority: int) -> Any:
        import torch

        desc, ctx, stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "cuDevResourceGenerateDesc")
        self._check(
            self.cu.cuGreenCtxCreate(ctypes.byref(ctx), desc, dev, _CU_GREEN_CTX_DEFAULT_STREAM), "cuGreenCtxCreate"
        )
        self._check(
            self.cu.cuGreenCtxStreamCreate(ctypes.byref(stream), ctx, _CU_STREAM_NON_BLOCKING, priority),
            "cuGreenCtxStreamCreate",
        )
        return torch.cuda.ExternalStream(stream.value, device=device)

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUresult {rc}")


_splits: dict[tuple[int, int], GreenSplit] = {}
_splits_lock = threading.Lock()


def green_streams(sms: int, device: int = 0) -> tuple[Any, Any]:
    """(the decoder's stream on `sms` SMs, the LLM's stream on the rest), made once per size in this process."""
    with _splits_lock:
        split = _splits.get((sms, device))
        if split is None:
            # The decoder's stream at high priority: its own host work (noise, HiFT's small kernels) goes first.
            split = _splits[(sms, device)] = GreenSplit(sms, device, priority=-1)
            logger.info("green contexts: %d SMs for the speech decoder, %d for the LLM", *split.sms)
        return split.streams


class StreamSlot:
    """The CUDA stream one thread should run on: set from any thread (`want`), taken up by the owning thread between
    its own steps (`take_up`), after the work it queued on its old stream has finished (so no tensor of the old
    stream is read before it is written, and the caching allocator's blocks of the old stream are idle)."""

    def __init__(self) -> None:
        self._wanted: Any = None  # None: the thread's own stream (`home`)
        self._now: Any = None
        self._home: Any = None

    def want(self, stream: Any) -> None:
        self._wanted = stream

    def take_up(self) -> None:
        wanted = self._wanted
        if wanted is self._now:
            return
        import torch

        current = torch.cuda.current_stream()
        if self._home is None:
            self._home = current
        target = wanted if wanted is not None else self._home
        if target != current:
            current.synchronize()
            torch.cuda.set_stream(target)  # vLLM's patched set_stream: its `current_stream()` follows
        self._now = wanted


def set_green_split(scheduler: Any, sms: int) -> None:
    """Give a decoder scheduler beside the LLM (`own_stream`) and the engine's loop (through the step gate of its
    `llm_pause`) their green streams, or their own ones back (`sms` 0). Elsewhere (a CPU decoder, the decoder in the
    API process, no gate): nothing to split, logged once when asked."""
    gate = getattr(getattr(scheduler, "llm_pause", None), "gate", None)
    decoder_slot = getattr(scheduler, "stream_slot", None)
    llm_slot = getattr(gate, "stream_slot", None)
    if not sms:
        for slot in (decoder_slot, llm_slot):
            if slot is not None:
                slot.want(None)
        return
    if not scheduler.own_stream or decoder_slot is None or llm_slot is None:
        logger.warning("green_sms=%d ignored: only with the decoder on CUDA inside vLLM's model process", sms)
        return
    index = scheduler.decoder.device.index or 0
    decoder_stream, llm_stream = green_streams(sms, index)
    decoder_slot.want(decoder_stream)
    llm_slot.want(llm_stream)
