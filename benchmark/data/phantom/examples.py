"""A picture of a phantom data set: labeled axial slices next to their organ overlays (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.phantom.settings import ORGANS


def _radiological(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) RAS+ slice -> (rows, cols) with anterior up and patient right on image left."""
    return slice_xy[::-1, ::-1].T


def render_examples(dataset: Path, out_png: Path, n: int = 4) -> Path:
    """Draw ``n`` labeled axial slices of a phantom data set and save them as a PNG.

    Each row shows the slice in an abdominal window (W400/L40 HU) in radiological display
    (anterior up, patient right on image left) next to the same slice with a colour overlay of
    the organ labels; a legend names the organs. Slices are taken at different heights so that
    different organs show. Returns ``out_png``.
    """
    # A bare Figure renders with Agg and leaves the caller's pyplot backend alone.
    import matplotlib
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dataset = Path(dataset)
    labels = sorted((dataset / "labelsTr").glob("*.nii.gz"))
    if not labels:
        raise FileNotFoundError(f"no labeled cases in {dataset / 'labelsTr'}")
    colors = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[: len(ORGANS)]
    cmap = ListedColormap(np.vstack([[0, 0, 0, 0], colors]))
    fracs = np.linspace(0.92, 0.3, n) if n > 1 else np.array([0.6])
    fig = Figure(figsize=(10, 5 * n + 0.8))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, frac in enumerate(fracs):
        lab_path = labels[row % len(labels)]
        name = lab_path.name.removesuffix(".nii.gz")
        img_path = dataset / "imagesTr" / f"{name}_0000.nii.gz"
        # Canonical (RAS+) orientation: a no-op for the phantom, needed for other data sets.
        lab_nii = nib.as_closest_canonical(nib.load(str(lab_path)))
        img_nii = nib.as_closest_canonical(nib.load(str(img_path)))
        lab = np.asarray(lab_nii.dataobj)
        img = np.asarray(img_nii.dataobj)
        nz = lab.shape[2]
        # Within a window around the requested height take the slice showing most organs.
        lo, hi = int(max(0, (frac - 0.08) * nz)), int(min(nz, (frac + 0.08) * nz + 1))
        counts = [len(np.unique(lab[:, :, k])) for k in range(lo, hi)]
        k = lo + int(np.argmax(counts))
        gray = _radiological(img[:, :, k].astype(np.float32))
        over = _radiological(lab[:, :, k])
        zooms = img_nii.header.get_zooms()
        for ax in axes[row]:
            ax.imshow(gray, cmap="gray", vmin=40 - 200, vmax=40 + 200, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, va="center")
            ax.text(0.5, 0.97, "A", color="yellow", transform=ax.transAxes, ha="center", va="top")
        masked = np.ma.masked_where(over == 0, over)
        axes[row, 1].imshow(
            masked, cmap=cmap, vmin=-0.5, vmax=len(ORGANS) + 0.5, alpha=0.5, interpolation="nearest"
        )
        present = ", ".join(ORGANS[i] for i in np.unique(over) if i)
        axes[row, 0].set_title(
            f"{name}  z={k}/{nz}  {zooms[0]:.2f}x{zooms[1]:.2f}x{zooms[2]:.2f} mm", fontsize=9
        )
        axes[row, 1].set_title(present, fontsize=7, wrap=True)
    handles = [Patch(color=colors[i - 1], label=f"{i} {nm}") for i, nm in ORGANS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (5 * n + 0.8) + 0.02, 1, 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
