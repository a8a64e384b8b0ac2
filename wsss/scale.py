"""One scale policy: every setting that depends on image or map size, written once in its paper's
terms and converted to the maps at hand.

The papers fix test-time scales, dilations, ASPP rates, windows, radii and walk lengths for PASCAL
VOC images (about 500 px on the long side, maps of 30-125 cells). SynthVOC's quick images are
96 px, their maps 12-24 cells; settings copied unchanged from VOC reach past the map (a dilation
of 24 on a 24-cell map) or shrink an object to a few cells (scale 0.5 of a 12-cell map). Each
method therefore states a setting as (paper value, stride of the map it applies to in the paper)
and asks the policy for its value here. Four rules, all exact (the paper's values) at VOC size:

- **Neighbourhood sizes** (radii, dilations, ASPP rates, windows; in cells of one map): scaled by
  the ratio of our map size to the paper's, `(image_size / stride) / (REFERENCE_SIZE /
  paper_stride)`, never above 1, rounded half up, at least `floor` cells (1 unless the setting
  needs more, e.g. enough neighbours to sample from). Lists keep each converted value once.
- **Image scales** of multi-scale passes (test-time augmentation, MAM): the paper's list, less
  every scale at which the network's coarsest map would be shorter than MIN_MAP_CELLS; scale 1
  always stays.
- **Random-walk reach**: a walk keeps its radius and affinity power (they define the affinity);
  its step count is scaled so that radius * sqrt(steps), the distance a score diffuses, covers
  the same share of the map as in the paper: steps * ratio**2, at least 1.
- **Walk resolution**: the walk runs at the paper's stride unless that map would be shorter than
  `min_walk_cells` (MIN_WALK_CELLS); then at the largest power-of-two stride that keeps it (an
  image-sized map at most).

Pooling bins (VWL's HSPP levels) are fractions of the map, not cells: they need no conversion.

Why these floors (SynthVOC quick, val, measured when they were chosen): MAM's 0.5-scale map of a
96 px image is 6x6 cells, holds 8.8% of its activation on the object against 23-31% at scales 1
and 2, and received the largest MAM weight; at VOC size every paper scale gives at least 11 cells,
so MIN_MAP_CELLS = 8 drops nothing there. SANCE's final walk on 24-cell maps (the paper's stride 4
of a 96 px image) scored 17.6 mIoU, on 48-cell maps 55.8; VOC's 94-125-cell walk maps are above
MIN_WALK_CELLS = 48. A floor of 32 was measured too, since it would keep the tests' 64 px images at
stride 2 instead of an image-sized walk fed 4x upsampled input (SANCE's tiny notebook 306 -> 112 s):
on a 32-cell map (stride 3) the same quick SANCE run's walk scored 55.3 val mIoU against 57.6 on
its 48-cell map (seed 0, the code of December 2026), a cost that 128-191 px images would pay. So
only the tests' smoke preset lowers the floor (`wsss.experiment.WALK_CELLS`): its numbers are no
results, and at 32 cells its 64 px images walk at stride 2 on 2x-upsampled contour input, the code
path of quick's 96 px images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

REFERENCE_SIZE = 500  # px: the long side of a PASCAL VOC image, where the papers set their values
MIN_MAP_CELLS = 8  # a multi-scale pass whose coarsest map is shorter than this is dropped
MIN_WALK_CELLS = 48  # a random walk's map is kept at least this long


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class ScalePolicy:
    """The conversion for images whose long side is `image_size` px (REFERENCE_SIZE: the papers')."""

    image_size: int = REFERENCE_SIZE
    min_walk_cells: int = MIN_WALK_CELLS

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.min_walk_cells < 1:
            raise ValueError(f"min_walk_cells must be >= 1, got {self.min_walk_cells}")

    def cells(self, stride: int) -> float:
        """The long side, in cells, of a map at `stride`."""
        return self.image_size / stride

    def ratio(self, stride: int, paper_stride: int) -> float:
        """Our map at `stride` over the paper's map at `paper_stride`, at most 1."""
        return min(1.0, self.cells(stride) / (REFERENCE_SIZE / paper_stride))

    def size(self, value: float, stride: int, paper_stride: int, floor: int = 1) -> int:
        """A neighbourhood size (radius, dilation, rate, window) given in cells of the paper's map."""
        return max(floor, round_half_up(value * self.ratio(stride, paper_stride)))

    def sizes(self, values: Sequence[float], stride: int, paper_stride: int, floor: int = 1) -> tuple[int, ...]:
        """`size` of each value, each result once, in the paper's order."""
        return tuple(dict.fromkeys(self.size(v, stride, paper_stride, floor) for v in values))

    def scales(self, scales: Sequence[float], coarsest_stride: int) -> tuple[float, ...]:
        """The image scales whose coarsest map (at `coarsest_stride`) keeps MIN_MAP_CELLS; scale 1 always."""
        if not scales:
            raise ValueError("scales must not be empty")
        kept = tuple(s for s in scales if s == 1.0 or self.cells(coarsest_stride) * s >= MIN_MAP_CELLS)
        return kept if kept else (1.0,)

    def walk_steps(self, steps: float, stride: int, paper_stride: int) -> int:
        """Walk steps with the paper's reach on our map (the radius unchanged): steps * ratio**2, >= 1."""
        return max(1, round_half_up(steps * self.ratio(stride, paper_stride) ** 2))

    def walk_log2_steps(self, log2_steps: int, stride: int, paper_stride: int) -> int:
        """`walk_steps` for a walk of 2**log2_steps steps (IRNet's matrix squarings): the log2, >= 1."""
        steps = 2.0 ** log2_steps * self.ratio(stride, paper_stride) ** 2
        return max(1, round_half_up(math.log2(max(steps, 1.0))))

    def walk_stride(self, paper_stride: int) -> int:
        """The stride of a random walk's map: the paper's, halved while the map is under `min_walk_cells`."""
        stride = paper_stride
        while stride > 1 and self.cells(stride) < self.min_walk_cells:
            stride //= 2
        return stride


PAPER_SCALE = ScalePolicy()  # the papers' own settings (VOC-sized images)
