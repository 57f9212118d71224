"""PNG plots of a GPU suite result (bench/gpu_suite.py): playable latency, first audio, streams with a gap and the
GPU time split against concurrent streams; the product defaults vs the seed-pattern baseline of the same run, and
any extra configurations of the run beside them.

    python -m bench.plot_results bench/results/gpu_suite.json --out bench/results

Needs matplotlib (`pip install -e ".[bench]"`); the server never imports it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

plt.rcParams["axes.titlesize"] = 9

REALTIME_MS = 1000.0  # bench.playback.REALTIME_PLAYABLE_S, in ms (plotting must not import the numpy side)
STREAMS = "concurrent spoken-chat streams"


def _title(result: dict, what: str) -> str:
    latest = result.get("latest") or {}
    flag = "product defaults" if latest.get("defaults") else "NOT the product defaults"
    return f"{what}\n{latest.get('gpu', '?')}, {latest.get('date', '?')}: {flag}, full-size shapes, random weights"


def _series(result: dict) -> list[tuple[str, list[dict], str]]:
    """(label, levels, line style): ours (defaults), the baseline, then each extra configuration."""
    defaults = result.get("defaults") or {}
    out = [("ours (defaults)", defaults.get("levels") or [], "-o")]
    if defaults.get("baseline"):
        out.append(("seed pattern (baseline)", defaults["baseline"], "--s"))
    for config in result.get("configs") or []:
        if config.get("levels"):
            out.append((config["name"], config["levels"], ":^"))
    return out


def _percentile_plot(result: dict, key: str, ylabel: str, what: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, levels, style in _series(result):
        points = [(lv["concurrency"], lv[key]) for lv in levels if lv[key]["p50"] is not None]
        if not points:
            continue
        c = [x for x, _ in points]
        (line,) = ax.plot(c, [p["p50"] for _, p in points], style, label=f"{label} p50")
        ax.plot(c, [p["p99"] for _, p in points], style, color=line.get_color(), alpha=0.45, label=f"{label} p99")
    ax.axhline(REALTIME_MS, color="red", lw=0.8, ls=":", label="1000 ms (real-time rule)")
    ax.set(xscale="log", yscale="log", xlabel=STREAMS, ylabel=ylabel, title=_title(result, what))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _gap_plot(result: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, levels, style in _series(result):
        levels = [lv for lv in levels if lv["turns"]]
        if not levels:
            continue
        c = [lv["concurrency"] for lv in levels]
        frac = [lv["streams_with_gap"] / lv["turns"] for lv in levels]
        ax.plot(c, frac, style, label=label)
        for x, y, lv in zip(c, frac, levels, strict=True):
            ax.annotate(
                f"{lv['streams_with_gap']}/{lv['turns']}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
                fontsize=6,
            )
    ax.set(
        xscale="log",
        xlabel=STREAMS,
        ylabel="fraction of streams with a gap",
        ylim=(-0.05, 1.15),
        title=_title(result, "Streams whose playback runs dry (player starting at the first chunk)"),
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _split_plot(result: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    levels = [lv for lv in (result.get("defaults") or {}).get("levels") or [] if lv.get("gpu_split")]
    x = range(len(levels))
    width = 0.27
    parts = (("llm", "LLM (vLLM)"), ("decoder", "speech decoder"), ("tokenizer", "speech tokenizer"))
    for k, (key, label) in enumerate(parts):
        values = [lv["gpu_split"].get(f"{key}_busy_fraction") or 0 for lv in levels]
        ax.bar([i + (k - 1) * width for i in x], values, width, label=label)
    ax.set_xticks(list(x), [str(lv["concurrency"]) for lv in levels])
    ax.set(
        xlabel=STREAMS,
        ylabel="busy fraction of the level's wall time",
        ylim=(0, 1.15),
        title=_title(result, "GPU time split (busy time per component; they overlap)"),
    )
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        _percentile_plot(
            result,
            "playable_ms",
            "playable latency (ms)",
            "Playable latency (start delay for gap-free playback) vs streams",
            out / "playable_vs_streams.png",
        ),
        _percentile_plot(
            result,
            "first_audio_ms",
            "first audio (ms)",
            "First-audio latency vs streams",
            out / "first_audio_vs_streams.png",
        ),
        _gap_plot(result, out / "gaps_vs_streams.png"),
        _split_plot(result, out / "gpu_split.png"),
    ]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    for path in plot(json.loads(args.result.read_text()), args.out):
        print(path)


if __name__ == "__main__":
    main()
