"""Clustered feature occlusion (Dowling 2018, "Deep Introspection", MEng thesis, ch. 3):
relevance -> features (`clusters`), features -> occluded images (`occluder`), occluded
predictions -> the four metrics (`metrics`, with `window_agreement` for a sliding-window
map beside the features), and the interactive tool (`tool`)."""

from xai_utils.feature_occlusion.clusters import (
    Features,
    connected_components,
    drop_small,
    extract,
    offsets,
)
from xai_utils.feature_occlusion.metrics import analyze, evaluate, subset_index, window_agreement
from xai_utils.feature_occlusion.occluder import (
    STRATEGIES,
    Occluder,
    block_maps,
    box_masks,
    occlude,
    pixel_range,
    subsets,
)
from xai_utils.feature_occlusion.tool import OcclusionTool, label_image

__all__ = [
    "STRATEGIES", "Features", "OcclusionTool", "Occluder", "analyze", "block_maps", "box_masks",
    "connected_components", "drop_small", "evaluate", "extract", "label_image", "occlude",
    "offsets", "pixel_range", "subset_index", "subsets", "window_agreement",
]
