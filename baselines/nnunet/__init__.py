"""`nnunet`: the real nnU-Net v2 (`nnunetv2` package), planned and trained on the budget's slices.

For each run the budget's labeled slices are written as a 2D data set in nnU-Net raw layout
into run-scoped `nnUNet_raw` / `nnUNet_preprocessed` / `nnUNet_results` folders (a fresh
temporary folder, deleted after `fit` unless `keep_files`): every slice is its own case, a
2D NIfTI written with SimpleITK (nnU-Net reads it as a 1 × S × S image), `channel_names
{"0": "CT"}` (nnU-Net's CT normalisation). Then nnU-Net's own Python API does what
`nnUNetv2_plan_and_preprocess` does (fingerprint with its data set integrity check,
experiment planning, preprocessing of the `2d` configuration) and nnU-Net's trainer (the
class named by `trainer`, nnUNetTrainer by default: its loss with deep supervision, SGD with
Nesterov momentum and poly learning rate, patch sampling with foreground oversampling,
augmentation) trains on every labeled slice, followed by nnU-Net's final validation. Test
slices are predicted with `nnUNetPredictor`, each slice as a case of its own (1 × S × S), as
each labeled slice was one case in training: a slice's labels never depend on the slices
predicted with it.

Schedule: the protocol's fine-tuning budget in samples, like every other method. nnU-Net's
batch comes from its plan (2 for a few slices, up to 5 % of the data set's voxels per batch),
so the epochs are set in `fit`: steps = samples ÷ planned batch (rounded up), in epochs of
`iterations_per_epoch` (nnU-Net's 250), the last epoch shortened to the remainder, so the
run sees exactly as many samples as a method with a fixed batch. The run reports (steps,
batch) to the runner (`ctx.finetune_steps`); `--set epochs=N` trains N full epochs and is
off-protocol unless that is the budget. `info.nnunet.schedule` records trainer, epochs,
iterations, batch, patch and samples; `info.nnunet.pseudo_dice` nnU-Net's own pseudo-Dice of
the last epoch and the Dice of its final validation.

Spacing: every slice, in training and at prediction, is handed to nnU-Net at one nominal
in-plane spacing (`NOMINAL_SPACING_MM`, 1 × 1 mm), so nnU-Net's plan has that target
spacing and it never resamples. The slices are already resized to the protocol's slice size
(the pixel grid every other method sees), and `predict` gets no spacing through the
`Method` interface: with the cases' true spacings (±12 % on the phantom) nnU-Net would
resample its training slices but not its test slices. One nominal spacing keeps training and
prediction on the same grid.

Mirroring: off by default (`mirroring = false`), in training and at test time, because flips
swap the left and right organs and no other method sees them; `--set mirroring=true` gives
nnU-Net's own default (its mirroring augmentation and test-time mirroring).

Splits: nnU-Net's default 5-fold cross-validation would leave labeled slices out of
training and needs five cases; the budget is the training set, so `fold = "all"` (the
default) trains on every slice (nnU-Net validates on the same slices). `fold = "0"` writes
one explicit split to `splits_final.json`: `val_fraction` of the slices (at least one)
held out, or, with fewer than two slices, val = train. The run record's `info.nnunet` says
which, with nnU-Net's plan (patch size, batch size, stages, target spacing).

nnU-Net reads `nnUNet_def_n_proc` once, when `nnunetv2.configuration` is first imported;
`processes` applies from the first nnU-Net run of a process on. Its own printing goes to
`nnunet.log` in the run folder (kept, with the folder, when a step fails).
"""

from baselines.nnunet.config import (
    CONFIGURATION,
    DATASET_ID,
    DATASET_NAME,
    DEFAULT_PLANNER,
    DEFAULT_TRAINER,
    NOMINAL_SPACING_MM,
    NNUNetConfig,
    find_planner,
    find_trainer,
)
from baselines.nnunet.environment import nnunet_environment
from baselines.nnunet.export import export_raw_dataset, write_split
from baselines.nnunet.method import NNUNet
from baselines.nnunet.trainer import Schedule, describe_plan, plan_schedule, trainer_class

__all__ = [
    "CONFIGURATION",
    "DATASET_ID",
    "DATASET_NAME",
    "DEFAULT_PLANNER",
    "DEFAULT_TRAINER",
    "NOMINAL_SPACING_MM",
    "NNUNet",
    "NNUNetConfig",
    "Schedule",
    "describe_plan",
    "export_raw_dataset",
    "find_planner",
    "find_trainer",
    "nnunet_environment",
    "plan_schedule",
    "trainer_class",
    "write_split",
]
