"""Drop-in sparse and slimmable layers built on sparsecl.ops."""
from .block_sparse import BlockSparseLinear
from .slimmable import (SlimmableConv2d, SlimmableLinear, SwitchableBatchNorm2d, active_channels, count_macs,
                        recalibrate_bn, width)
from .sparse_linear import SparseLinear
from .sparse_conv import SparseConv2d

__all__ = ["BlockSparseLinear"]
__all__ += ["SlimmableConv2d", "SlimmableLinear", "SwitchableBatchNorm2d", "active_channels", "count_macs",
            "recalibrate_bn", "width"]
__all__ += ["SparseLinear"]
__all__ += ["SparseConv2d"]
