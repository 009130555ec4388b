"""The from-scratch rule, as data: which torch built-ins a submission may not use, and the problem each replaces.

Inside `cs336_basics`, nothing from `torch.nn`, `torch.nn.functional` or `torch.optim` except `nn.Parameter`, the
containers (`Module`, `ModuleList`, ...), the `torch.optim.Optimizer` base class and `torch.nn.init.trunc_normal_`;
the ATen kernels and private aliases behind those built-ins count as the built-ins. Both looks of the audit read
these tables: the static scan in the grader (`grader/audit.py`) and the sealed kernels in the worker
(`worker/seal.py`). The student README states the same rule (`staff/handout_files/README.md`).
"""

from __future__ import annotations

# The built-in each forbidden name stands for -> the problem whose solution it replaces.
REPLACES = {
    "linear": "linear",
    "Linear": "linear",
    "Bilinear": "linear",
    "embedding": "embedding",
    "Embedding": "embedding",
    "rms_norm": "rmsnorm",
    "RMSNorm": "rmsnorm",
    "layer_norm": "rmsnorm",
    "LayerNorm": "rmsnorm",
    "silu": "positionwise_feedforward",
    "SiLU": "positionwise_feedforward",
    "glu": "positionwise_feedforward",
    "softmax": "softmax",
    "Softmax": "softmax",
    "softmin": "softmax",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "multi_head_attention_forward": "multihead_self_attention",
    "MultiheadAttention": "multihead_self_attention",
    "TransformerEncoderLayer": "transformer_block",
    "TransformerDecoderLayer": "transformer_block",
    "Transformer": "transformer_lm",
    "TransformerEncoder": "transformer_lm",
    "cross_entropy": "cross_entropy",
    "CrossEntropyLoss": "cross_entropy",
    "log_softmax": "cross_entropy",
    "nll_loss": "cross_entropy",
    "NLLLoss": "cross_entropy",
    "AdamW": "adamw",
    "Adam": "adamw",
    "adamw": "adamw",
    "adam": "adamw",
    "_fused_adamw_": "adamw",
    "lr_scheduler": "learning_rate_schedule",
    "CosineAnnealingLR": "learning_rate_schedule",
    "clip_grad_norm_": "gradient_clipping",
    "clip_grad_norm": "gradient_clipping",
}
ALLOWED_NN = {
    "Module",
    "ModuleList",
    "ModuleDict",
    "Sequential",
    "ParameterList",
    "ParameterDict",
    "Parameter",
    "Buffer",
    "init",
    "parameter",
    "modules",
    "utils",
}
# torch source files whose code does a forbidden job (relative to torch's package directory).
FORBIDDEN_FILES = ("nn/functional.py", "nn/modules/", "optim/", "nn/utils/clip_grad.py")
ALLOWED_FILES = ("nn/modules/module.py", "nn/modules/container.py", "optim/optimizer.py", "nn/modules/__init__.py")


# The ATen kernels (and private aliases) behind the forbidden built-ins -> the name in REPLACES.
KERNELS = {
    "_softmax": "softmax",
    "softmax": "softmax",
    "special_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "log_softmax": "log_softmax",
    "silu": "silu",
    "silu_": "silu",
    "nll_loss": "nll_loss",
    "nll_loss_nd": "nll_loss",
    "nll_loss2d": "nll_loss",
    "nll_loss_forward": "nll_loss",
    "cross_entropy_loss": "cross_entropy",
    "linear": "linear",
    "embedding": "embedding",
    "embedding_bag": "embedding",
    "rms_norm": "rms_norm",
    "_fused_rms_norm": "rms_norm",
    "layer_norm": "layer_norm",
    "native_layer_norm": "layer_norm",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "_fused_adam_": "adam",
    "_fused_adamw_": "adamw",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention": "scaled_dot_product_attention",
    "_masked_softmax": "softmax",
    "_embedding_bag": "embedding",
    "_embedding_bag_forward_only": "embedding",
}


# ---------------------------------------------------------------- the kernels the worker replaces (`worker/seal.py`)
SEALED_KERNELS = {
    "_softmax": "softmax",
    "_log_softmax": "cross_entropy",
    "silu": "positionwise_feedforward",
    "silu_": "positionwise_feedforward",
    "glu": "positionwise_feedforward",
    "nll_loss_forward": "cross_entropy",
    "nll_loss2d_forward": "cross_entropy",
    "embedding": "embedding",
    "native_layer_norm": "rmsnorm",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_fused_adamw_": "adamw",
    "_fused_adam_": "adamw",
    "_masked_softmax": "softmax",
    "_embedding_bag": "embedding",
    "_embedding_bag_forward_only": "embedding",
}
# Sparse kernels, replaced at "SparseCPU" (`torch.sparse.softmax`, public API, runs them).
SEALED_SPARSE = {"_sparse_softmax": "softmax", "_sparse_log_softmax": "cross_entropy"}
SEALED_COMPOSITES = {
    "linear": "linear",
    "rms_norm": "rmsnorm",
    "_fused_rms_norm": "rmsnorm",
    "layer_norm": "rmsnorm",
    "cross_entropy_loss": "cross_entropy",
    "nll_loss": "cross_entropy",
    "nll_loss_nd": "cross_entropy",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
    "embedding_bag": "embedding",
}
SEALED_MARK = "is a forbidden built-in: the grader's worker has no such kernel"
