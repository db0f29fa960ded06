"""Figures of the physics benchmark (matplotlib, Agg backend, PNG and GIF).

- ``fig_loss.png``: median over windows of the best-so-far objective vs evaluations;
- ``fig_mpjpe.png``: median window MPJPE (mm) of the best-so-far iterate vs evaluations;
- ``fig_skeleton.png``: ground truth vs reconstruction of one test clip, projected through
  the clip's camera, a few frames side by side (with the 2D observations);
- ``clip.gif``: the same as an animation (all frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimus.physics.model import BONES

_COLORS = {
    "optimus": "C3",
    "optimus-humanoid": "C6",
    "optimus-noprecond": "C1",
    "mlp": "C4",
    "bfgs": "C0",
    "lbfgs": "C9",
    "adam": "C2",
}


# colours for names without a fixed one (variants run with --params-dir): the tab10
# colours no fixed method uses, then tab20's light shades
_SPARE = ("C5", "C7", "C8", "C1", "C4", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")


def _styles(methods) -> dict[str, dict]:
    """Line colour and style per method: the fixed colour of a known method, otherwise a
    spare colour unused by the methods plotted, dashed (so variants never share the colour
    of a baseline)."""
    taken = {_COLORS[m] for m in methods if m in _COLORS}
    spare = [c for c in _SPARE if c not in taken]
    styles, k = {}, 0
    for m in methods:
        if m in _COLORS:
            styles[m] = dict(color=_COLORS[m], ls="-")
        else:
            styles[m] = dict(color=spare[k % len(spare)], ls="--")
            k += 1
    return styles


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict, out: Path) -> None:
    plt = _plt()
    styles = _styles(list(results))
    for key, fname, ylabel, log in (
        ("losses", "fig_loss.png", "best objective (median over windows)", True),
        ("mpjpe_hist", "fig_mpjpe.png", "window MPJPE of best iterate, mm (median)", False),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
        for ax, first, title in (
            (axes[0], False, "all windows (window-by-window chains)"),
            (axes[1], True, "first windows (identical problem for all methods)"),
        ):
            for m, clips in results.items():
                wins = [c["windows"][0] if first else c["windows"] for c in clips.values()]
                if not first:
                    wins = [w for ws in wins for w in ws]
                med = np.nanmedian(np.array([w[key] for w in wins]), axis=0)
                ax.plot(np.arange(1, med.size + 1), med, label=m, lw=1.6, **styles[m])
            ax.set_xlabel("objective+gradient evaluations")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.set_title(title, fontsize=10)
        axes[0].legend(fontsize=8)
        fig.suptitle("MJX humanoid motion reconstruction")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def _project(camera: np.ndarray, pts: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from optimus.physics.camera import project

    return np.asarray(project(jnp.asarray(camera, jnp.float32), jnp.asarray(pts, jnp.float32)))


def _draw(ax, uv, color, lw=2.0, label=None):
    for i, (a, b) in enumerate(BONES):
        ax.plot(
            [uv[a, 0], uv[b, 0]],
            [uv[a, 1], uv[b, 1]],
            color=color,
            lw=lw,
            label=label if i == 0 else None,
        )


def plot_skeletons(clip: dict, results: dict, out: Path, method: str = "optimus") -> None:
    """Ground truth vs reconstruction (``method``, and the best classical baseline BFGS when
    present), projected, a few frames side by side; plus an animated GIF."""
    plt = _plt()
    key = "test[0]"
    methods = [m for m in (method, "bfgs") if m in results and key in results[m]]
    if not methods:
        return
    n = min(len(results[m][key]["kps"]) for m in methods)
    gt = _project(clip["camera"], clip["kp3d"][:n])
    rec = {m: _project(clip["camera"], results[m][key]["kps"][:n]) for m in methods}
    styles = _styles(list(results))  # the colours of the curve figures
    obs = clip["obs2d"][:n]
    conf = clip["conf"][:n]
    lo = np.nanmin([gt.min((0, 1))] + [np.nanmin(r, (0, 1)) for r in rec.values()], axis=0) - 40
    hi = np.nanmax([gt.max((0, 1))] + [np.nanmax(r, (0, 1)) for r in rec.values()], axis=0) + 40
    frames = np.linspace(0, n - 1, 4).astype(int)
    fig, axes = plt.subplots(1, len(frames), figsize=(3.2 * len(frames), 4.2))

    def panel(ax, f):
        ax.cla()
        _draw(ax, gt[f], "k", 3.0, "ground truth")
        for m in methods:
            _draw(ax, rec[m][f], styles[m]["color"], 1.6, m)
        ok = conf[f] > 0
        ax.scatter(obs[f, ok, 0], obs[f, ok, 1], s=8, c="0.5", label="2D observations")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(hi[1], lo[1])  # image y axis points down
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t = {0.02 * (f + 1):.2f} s", fontsize=9)

    for ax, f in zip(axes, frames, strict=True):
        panel(ax, f)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("test clip 0: ground truth (black) vs reconstruction, camera view")
    fig.tight_layout()
    fig.savefig(out / "fig_skeleton.png", dpi=110)
    plt.close(fig)

    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, ax = plt.subplots(figsize=(4, 4.6))

    def update(f):
        panel(ax, f)
        ax.legend(fontsize=7, loc="lower left")
        return []

    anim = FuncAnimation(fig, update, frames=n, interval=40)
    anim.save(out / "clip.gif", writer=PillowWriter(fps=25))
    plt.close(fig)
