"""PNG plots of a GPU suite result (bench/gpu_suite.py): first-audio latency, real-time factor and the GPU time
split against concurrency, ours vs the seed-pattern baseline of the same run.

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


def plot(result: dict, out: Path) -> list[Path]:
    ours, base, latest = result["ours"], result["baseline"], result["latest"]
    title = f"{latest['gpu']}, {latest['date']} (full-size shapes, random weights)"
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for series, label, style in ((ours, "ours", "-o"), (base, "seed pattern (baseline)", "--s")):
        c = [lv["concurrency"] for lv in series]
        ax.plot(c, [lv["ttfa_ms"]["p50"] for lv in series], style, label=f"{label} p50")
        ax.plot(c, [lv["ttfa_ms"]["p99"] for lv in series], style, alpha=0.5, label=f"{label} p99")
    ax.axhline(250, color="grey", lw=0.8, ls=":")
    ax.axhline(800, color="grey", lw=0.8, ls=":")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent spoken-chat streams",
        ylabel="first audio (ms)",
        title=f"First-audio latency vs concurrency\n{title}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    files.append(_save(fig, out / "ttfa_vs_concurrency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for series, label, style in ((ours, "ours", "-o"), (base, "seed pattern (baseline)", "--s")):
        c = [lv["concurrency"] for lv in series]
        ax.plot(c, [lv["rtf"]["p50"] for lv in series], style, label=f"{label} RTF p50")
        ax.plot(c, [lv["rtf"]["max"] for lv in series], style, alpha=0.5, label=f"{label} RTF max")
    ax.axhline(1.0, color="red", lw=0.8, ls=":", label="real time")
    ax.set(
        xscale="log",
        xlabel="concurrent spoken-chat streams",
        ylabel="(arrival -> last audio) / audio s",
        title=f"Real-time factor per stream vs concurrency (< 1: real time)\n{title}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    files.append(_save(fig, out / "realtime_vs_concurrency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    levels = [lv for lv in ours if lv.get("gpu_split")]
    x = range(len(levels))
    width = 0.27
    for k, (key, label) in enumerate(
        (("llm", "LLM (vLLM)"), ("decoder", "speech decoder"), ("tokenizer", "speech tokenizer"))
    ):
        ax.bar(
            [i + (k - 1) * width for i in x],
            [lv["gpu_split"].get(f"{key}_busy_fraction") or 0 for lv in levels],
            width,
            label=label,
        )
    ax.set_xticks(list(x), [str(lv["concurrency"]) for lv in levels])
    ax.set(
        xlabel="concurrent spoken-chat streams",
        ylabel="busy fraction of the level's wall time",
        title=f"GPU time split (busy time per component; they overlap)\n{title}",
        ylim=(0, 1.15),
    )
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.grid(alpha=0.3, axis="y")
    files.append(_save(fig, out / "gpu_split.png"))
    return files


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
