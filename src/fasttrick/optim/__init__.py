from .sgdw import FusedSGDW

__all__ = ["FusedSGDW"]
