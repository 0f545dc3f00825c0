from .fused import FusedResNet18, member_cross_entropy
from .resnet import ResNet18, resnet18

__all__ = ["FusedResNet18", "ResNet18", "member_cross_entropy", "resnet18"]
