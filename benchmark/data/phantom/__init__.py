"""Deterministic synthetic abdominal CT phantom with the 13 FLARE22 organs.

Each case is an axial abdominal CT volume of ``size x size x Z`` voxels in RAS+ voxel order
(index x grows toward the patient's right, y toward anterior, z toward superior, so that
``affine = diag(spacing)`` is already nibabel-canonical). Images are int16 HU (air -1000),
labels uint8 with the FLARE22 ids of :data:`ORGANS` (0 = background).

The anatomy is built from analytic shapes in millimetres around the body centre: an elliptical
body outline with subcutaneous fat and a muscle wall, spine and ribs, back muscles, psoas,
intra-abdominal fat with textured bowel loops and colon, unlabeled vessels, and the 13 organs,
each with its own HU range and texture. A smooth random deformation, per-case body and organ
sizes and positions, and correlated noise make every case different. Case ``i`` depends only on
``(seed, i, labeled)``, never on how many cases are generated or on the matrix size.

Modules: :mod:`.settings` (settings, organ table), :mod:`.shapes` (fields and primitives),
:mod:`.case` (one case's grid and painter), :mod:`.body` (everything but the organs),
:mod:`.organs` (one function per organ group), :mod:`.unlabeled` (colon and vessels),
:mod:`.writer` (NIfTI and ``dataset.json``), :mod:`.examples` (the PNG).
"""

from benchmark.data.phantom.case import generate_case
from benchmark.data.phantom.examples import render_examples
from benchmark.data.phantom.settings import AIR_HU, ORGANS, PhantomSettings
from benchmark.data.phantom.writer import write_phantom

__all__ = [
    "AIR_HU",
    "ORGANS",
    "PhantomSettings",
    "generate_case",
    "render_examples",
    "write_phantom",
]
