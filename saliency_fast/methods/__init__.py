"""Attribution methods, all with ``attribute(inputs, target=None) -> (B, H, W)``."""
from ._base import AttributionMethod

__all__ = ["AttributionMethod"]
