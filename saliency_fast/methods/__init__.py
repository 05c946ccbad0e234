"""Attribution methods, all with ``attribute(inputs, target=None) -> (B, H, W)``."""
from ._base import AttributionMethod
from .samp import SAMP, PathResult, SAMPResult
from .gradcam import (CAM, GradCAM, GradCAMPlusPlus, UnsupportedArchitecture, ViTReshape, find_cam_layer, gradcam_maps,
                      vit_reshape_transform)
from .gradients import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from .guided_ig import GuidedIG

__all__ = ["AttributionMethod", "SAMP", "SAMPResult", "PathResult",
           "Saliency", "InputXGradient", "IntegratedGradients", "SmoothGrad", "GradCAM", "gradcam_maps", "GuidedIG",
           "CAM", "GradCAMPlusPlus", "ViTReshape", "vit_reshape_transform", "find_cam_layer", "UnsupportedArchitecture"]
