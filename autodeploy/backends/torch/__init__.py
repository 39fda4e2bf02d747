"""backends/torch: reference implementations of the canonical `torch.ops.autodeploy.*` ops (CPU-capable).

Importing this package registers every op; `autodeploy.ops` does it for users of the ops.
"""

from autodeploy.backends.torch import attention, gated_mlp, moe, rmsnorm, rope  # noqa: F401
from autodeploy.backends.torch import cached_attention  # noqa: F401
from autodeploy.backends.torch import quant_linear  # noqa: F401
from autodeploy.backends.torch import fused_add_rmsnorm  # noqa: F401
from autodeploy.backends.torch import gated_linear  # noqa: F401
from autodeploy.backends.torch import cached_attention_rope  # noqa: F401
from autodeploy.backends.torch import add_rmsnorm_linear  # noqa: F401
from autodeploy.backends.torch import add_rmsnorm_fp8_linear  # noqa: F401
from autodeploy.backends.torch import gated_act_fp8_linear  # noqa: F401
from autodeploy.backends.torch import position_table  # noqa: F401
