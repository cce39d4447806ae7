"""The class-activation-map family: a map is a weighted sum of one layer's channels.

- `base.py`: `ChannelWeightedMap` (record the layer, weight its channels, sum, ReLU,
  upsample), CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017);
- `variants.py`: Grad-CAM++, LayerCAM and Score-CAM, each a short subclass that overrides
  how the channels are weighted;
- `layers.py`: which layer is read by default and how transformer tokens or channel-last
  outputs become maps; `head.py`: CAM's check of a global-average-pool + linear head;
- `grads.py`: the activations and gradients of one layer; `cache.py`: every layer and the
  top-k classes from one pass, for the explorers.
"""

from xai_utils.methods.cam.base import (
    CAM,
    ChannelWeightedMap,
    GradCAM,
    LayerCache,
    LayerSpec,
    activations_and_gradients,
    cam,
    cam_layer_spec,
    default_layer,
    default_layer_spec,
    gap_linear_head,
    global_pool_layer,
    gradcam,
    last_conv_up_to,
    stage_layers,
    upsample,
    weighted_sum,
)
from xai_utils.methods.cam.variants import (
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    gradcampp,
    layercam,
    scorecam,
)

__all__ = ["CAM", "ChannelWeightedMap", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "LayerCache",
           "LayerSpec", "ScoreCAM", "activations_and_gradients", "cam", "cam_layer_spec",
           "default_layer", "default_layer_spec", "gap_linear_head", "global_pool_layer",
           "gradcam", "gradcampp", "last_conv_up_to", "layercam", "scorecam", "stage_layers",
           "upsample", "weighted_sum"]
