from .sgdw import FusedSGDW

# After the submodule `sgdw` is loaded (which binds its name here), the function takes the name.
from .functional import PerTensorPathWarning, sgdw  # isort: skip

__all__ = ["FusedSGDW", "PerTensorPathWarning", "sgdw"]
