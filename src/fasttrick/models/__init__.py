from .resnet import ResNet18, resnet18

__all__ = ["ResNet18", "resnet18"]
