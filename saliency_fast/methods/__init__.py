"""Attribution methods, all with ``attribute(inputs, target=None) -> (B, H, W)``."""
from ._base import AttributionMethod
from .samp import SAMP, PathResult, SAMPResult
from .gradcam import GradCAM, gradcam_maps
from .gradients import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from .guided_ig import GuidedIG

__all__ = ["AttributionMethod", "SAMP", "SAMPResult", "PathResult",
           "Saliency", "InputXGradient", "IntegratedGradients", "SmoothGrad", "GradCAM", "gradcam_maps", "GuidedIG"]
