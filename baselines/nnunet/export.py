"""The budget's labeled slices as an nnU-Net raw 2D data set (one case per slice), and the
explicit split of `fold = "0"`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from baselines.nnunet.config import DATASET_NAME, NOMINAL_SPACING_MM
from benchmark.method import SliceSet


def _write_2d(array: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    # SimpleITK orders spacing (column, row); nnU-Net reverses it back to array order.
    image.SetSpacing((spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path), useCompression=True)


def export_raw_dataset(labeled: SliceSet, raw_root: Path, num_classes: int) -> dict[str, str]:
    """Write the labeled slices as an nnU-Net raw 2D data set; returns case name → slice id.

    `raw_root/DATASET_NAME/{imagesTr,labelsTr,dataset.json}`; images float32 in [0, 1]
    (`{case}_0000.nii.gz`), labels uint8 (`{case}.nii.gz`), labels 0..num_classes-1 declared,
    every slice at `NOMINAL_SPACING_MM` (the spacing `predict` hands nnU-Net too).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(raw_root) / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    images = labeled.images()[:, 0].numpy().astype(np.float32)
    labels = labeled.labels().numpy().astype(np.uint8)
    names = {}
    for i, slice_id in enumerate(labeled.ids):
        name = f"slice_{i:05d}"
        _write_2d(images[i], NOMINAL_SPACING_MM, folder / "imagesTr" / f"{name}_0000.nii.gz")
        _write_2d(labels[i], NOMINAL_SPACING_MM, folder / "labelsTr" / f"{name}.nii.gz")
        names[name] = slice_id
    generate_dataset_json(
        str(folder),
        channel_names={0: "CT"},
        labels={"background": 0, **{f"class_{k}": k for k in range(1, num_classes)}},
        num_training_cases=len(names),
        file_ending=".nii.gz",
        dataset_name=DATASET_NAME,
        description="labeled slices of one labelbench budget draw, one 2D case per slice",
        overwrite_image_reader_writer="SimpleITKIO",
        license="same as the source data set",
        converted_by="labelbench",
    )
    return names


def write_split(preprocessed: Path, names: list[str], val_fraction: float) -> dict[str, Any]:
    """One explicit split in `splits_final.json`; val = train when there are fewer than 2 cases."""
    names = sorted(names)
    if len(names) < 2:
        split = {"train": names, "val": names}
    else:
        n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
        split = {"train": names[:-n_val], "val": names[-n_val:]}
    (preprocessed / DATASET_NAME / "splits_final.json").write_text(json.dumps([split], indent=1))
    return {
        "fold": 0,
        "source": "splits_final.json (one split)",
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
        "val_is_train": split["val"] == split["train"],
    }
