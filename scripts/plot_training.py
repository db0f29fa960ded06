"""Plot meta-training curves (train and validation meta-loss) of the shipped models.

Usage: python scripts/plot_training.py [bench_results/training]
Reads NAME-log.csv files (copied from runs/NAME/log.csv) and writes training.png beside them.
The physics fine-tune (optimus-humanoid) has its own folder, bench_results/training/physics:
its meta-loss is on another scale and its validation problems are physics windows.
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(folder: str = "bench_results/training") -> Path:
    folder = Path(folder)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted(folder.glob("*-log.csv")):
        name = path.name[: -len("-log.csv")]
        with path.open() as fh:
            rows = list(csv.DictReader(fh))
        trained = [r for r in rows if r["loss"]]  # a fine-tune's row 0 only validates
        steps = [int(r["step"]) for r in trained]
        loss = [float(r["loss"]) for r in trained]
        k = 50  # moving average of the (noisy) PES training loss
        smooth = [
            sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1])
            for i in range(len(loss))
        ]
        ax1.plot(steps, smooth, label=name)
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
        ax2.plot(*zip(*val, strict=True), marker="o", ms=3, label=name)
    ax1.set(
        xlabel="outer step", ylabel="truncation meta-loss (50-step mean)", title="PES training loss"
    )
    ax2.set(
        xlabel="outer step",
        ylabel="mean log10 f_t/f_0 over the horizon",
        title="validation meta-loss (fixed validation problems)",
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = folder / "training.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
