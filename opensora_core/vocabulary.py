"""The synthetic clips' vocabulary: the colours, shapes, sizes, motions and backgrounds a clip is drawn from.

The bottom layer holds it because three layers read it: the config validates `data.synthetic` against it, the data
layer renders clips from it, and the evaluation reads colours and motions back from pixels with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Well-separated saturated colours (hue 0, 120, 240, 60, 300, 180 degrees): readable from pixels after yuv420p.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 245),
    "yellow": (240, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Directions dominate the mix (what the evaluation measures); zoom and rotation are a minority.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "zoom_in", "zoom_out", "rotate")
MOTION_WEIGHTS: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.07, 0.07, 0.06)
# name -> (colour at the first frame, colour at the last frame): unsaturated or dark, so objects stand out.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "black": ((10, 10, 10), (10, 10, 10)),
    "dark gray": ((55, 55, 55), (55, 55, 55)),
    "gray": ((115, 115, 115), (115, 115, 115)),
    "day to night": ((170, 185, 200), (12, 14, 32)),  # the report's showcase: the sky turns from day to night
}
SIZES: dict[str, float] = {"small": 0.17, "large": 0.25}  # object radius as a fraction of the frame side
FPS = 8
TRANSLATION_STARTS = ("edge", "centre")
TWO_OBJECT_FRACTION = 0.25
LANE_JITTER = 0.2        # one-object clips: centre in 0.3..0.7 (the moving axis follows its trajectory)

_MOTION_PHRASE = {
    "left": "moves to the left",
    "right": "moves to the right",
    "up": "moves up",
    "down": "moves down",
    "zoom_in": "zooms in",
    "zoom_out": "zooms out",
    "rotate": "rotates",
}


@dataclass(frozen=True)
class Vocabulary:
    """What clips are drawn from: subsets of the colours, motions and backgrounds, and the share of two-object
    clips. The default is everything; the tiny preset narrows it (params.yaml `data.synthetic`) so that a model
    trained for minutes on CPU sees each colour x direction often enough to learn it."""

    colors: tuple[str, ...] = tuple(COLORS)
    motions: tuple[str, ...] = MOTIONS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    two_object_fraction: float = TWO_OBJECT_FRACTION
    # A one-object clip's centre is drawn from 0.5 +- lane_jitter on each axis; a translation overrides the axis it
    # moves along, so this is how far its lane sits off the centre line. 0 makes a clip a function of its caption.
    lane_jitter: float = LANE_JITTER
    # Where a one-object translation starts: "edge" (0.2 or 0.8 of the side, crossing to the other one) or "centre"
    # (0.5, moving out to 0.15 or 0.85). From the centre, which half of the frame the object moves into is the
    # caption's direction; from an edge, where it is depends on the direction and the frame index together.
    start: str = "edge"

    def __post_init__(self) -> None:
        for name, chosen, known in (("colors", self.colors, COLORS), ("motions", self.motions, MOTIONS),
                                    ("backgrounds", self.backgrounds, BACKGROUNDS)):
            unknown = [c for c in chosen if c not in known]
            if unknown or not chosen:
                raise ValueError(f"{name}: {unknown or 'empty'} not among {list(known)}")
        if not 0.0 <= self.two_object_fraction <= 1.0:
            raise ValueError(f"two_object_fraction must be in [0, 1], got {self.two_object_fraction}")
        if not 0.0 <= self.lane_jitter <= 0.3:
            raise ValueError(f"lane_jitter must be in [0, 0.3] (the object stays inside the frame), got {self.lane_jitter}")
        if self.start not in TRANSLATION_STARTS:
            raise ValueError(f"start must be one of {list(TRANSLATION_STARTS)}, got {self.start!r}")
        if self.two_object_fraction and (len(self.colors) < 2 or not {"left", "right", "up", "down"} <= set(self.motions)):
            raise ValueError("two-object clips need at least two colours and all four directions among the motions")

    @property
    def motion_weights(self) -> np.ndarray:
        w = np.asarray([MOTION_WEIGHTS[MOTIONS.index(m)] for m in self.motions])
        return w / w.sum()

    @classmethod
    def from_config(cls, section) -> Vocabulary:
        """From params.yaml's `data.synthetic` (the config model or its dict; None fields keep the default)."""
        if section is None:
            return cls()
        fields = section.model_dump() if hasattr(section, "model_dump") else dict(section)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None})


FULL_VOCABULARY = Vocabulary()
