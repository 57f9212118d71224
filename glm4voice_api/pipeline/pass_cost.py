"""How long a decoder pass is expected to take, learned from the passes the scheduler has measured."""

from __future__ import annotations

from typing import NamedTuple

from glm4voice_api.models.speech_decoder.flow_graphs import padded_batch

__all__ = ["PASS_LOG_SIZE", "PassCost", "PassRecord"]


class PassCost:
    """Expected seconds of a decoder pass from its padded size, fitted online: seconds = fixed + per_unit x units.

    units = rows rounded up to the CUDA-graph batch bucket (`buckets`: the decoder's, powers of two by default) x the
    longest row's tokens (all rows are padded to it). Measured on an H200 (bench/results/gpu_decoder_profile.json) the flow's ODE is ~90% of a pass and
    follows this line closely: ~45 ms fixed (~13k small kernels) plus time linear in the padded frames. Fitted by
    exponentially weighted least squares, so it follows the GPU's share the decoder actually gets beside the LLM.
    """

    def __init__(self, forget: float = 0.95, buckets: tuple[int, ...] | None = None) -> None:
        self.forget = forget
        self.buckets = buckets
        """The batch sizes passes are padded to (None: powers of two)."""
        self._n = self._x = self._y = self._xx = self._xy = 0.0
        self.passes = 0

    @staticmethod
    def units(rows: int, longest_row: int, buckets: tuple[int, ...] | None = None) -> float:
        return float(padded_batch(rows, buckets) * max(1, longest_row))

    def padded_rows(self, rows: int) -> int:
        return padded_batch(rows, self.buckets)

    def padded_units(self, rows: int, longest_row: int) -> float:
        """`units` with this decoder's batch buckets."""
        return self.units(rows, longest_row, self.buckets)

    def observe(self, units: float, seconds: float) -> None:
        f = self.forget
        self.passes += 1
        self._n = f * self._n + 1.0
        self._x = f * self._x + units
        self._y = f * self._y + seconds
        self._xx = f * self._xx + units * units
        self._xy = f * self._xy + units * seconds

    def estimate(self, units: float) -> float | None:
        """None until a few passes of different sizes were seen."""
        if self.passes < 4:
            return None
        mx, my = self._x / self._n, self._y / self._n
        var = self._xx / self._n - mx * mx
        if var <= (0.05 * mx) ** 2:  # sizes too alike to separate fixed and per-unit cost
            return my * units / mx if mx > 0 else None
        slope = max(0.0, (self._xy / self._n - mx * my) / var)
        return max(0.0, my - slope * mx) + slope * units


PASS_LOG_SIZE = 20000


class PassRecord(NamedTuple):
    """One decoder pass, as `DecoderScheduler.pass_log` keeps it."""

    start: float
    """`clock()` when the pass began."""
    seconds: float
    rows: int
    longest: int
    """Tokens in the longest row (context + new): with the rows, what the pass is padded to."""
    new_tokens: int
    first_rows: int
    """Rows that were a reply's first chunk."""
    held_rows: int
    """Rows that deadline batching had held."""
    nested: bool
    """Run between two steps of another pass (preemption)."""
