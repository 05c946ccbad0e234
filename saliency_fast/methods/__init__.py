"""Attribution methods, all with ``attribute(inputs, target=None) -> (B, H, W)``."""
from ._base import AttributionMethod, Baselines, UnsupportedArchitecture
from .samp import SAMP, PathResult, SAMPResult
from .gradcam import (CAM, GradCAM, GradCAMPlusPlus, ViTReshape, find_cam_layer, gradcam_maps,
                      vit_reshape_transform)
from .gradients import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from .guided_ig import GuidedIG
from .lrp import LRP
from .deeplift import DeepLift
from .rise import RISE
from .lime import LIME
from .xrai import XRAI
from .blur_ig import BlurIG

__all__ = ["AttributionMethod", "Baselines", "UnsupportedArchitecture", "SAMP", "SAMPResult", "PathResult",
           "Saliency", "InputXGradient", "IntegratedGradients", "SmoothGrad", "GradCAM", "gradcam_maps", "GuidedIG",
           "LRP", "DeepLift", "RISE", "LIME", "XRAI", "BlurIG",
           "CAM", "GradCAMPlusPlus", "ViTReshape", "vit_reshape_transform", "find_cam_layer"]
