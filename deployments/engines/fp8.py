"""fp8 matmuls for the Flux transformer: float8 e4m3 weights with one scale per output row,
activations scaled per token on the fly, one `torch._scaled_mm` per linear layer.

This is the recipe of torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`,
written against torch directly: with torchao 0.18 the regionally compiled transformer had not
finished its first call after 380 s on an H100 (torch 2.11), while these layers compile with the
blocks in seconds. Hopper and Ada cards (compute capability 8.9 and up) run fp8 matmuls at about
twice the bf16 rate; the transformer's weights also take half the memory.
"""

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# AdaLayerNorm modulation layers see one row per image and set every block's scale and shift:
# small matmuls, large effect on the output. They stay in bf16.
KEPT_IN_BF16 = ("norm1.linear", "norm1_context.linear", "norm.linear")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scale [M, 1]) with x ~= fp8 * scale, each row scaled to fp8's range."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight [out, in] -> (fp8 [out, in], fp32 scale [1, out]), as `Float8Linear` keeps them.
    Rows are scaled one by one, so quantizing layers then concatenating them gives what quantizing the
    concatenation gives (fused QKV). The scale has dense strides, as a concatenation of scales (a fused layer read
    ahead, `preload`) has: compiled regions are keyed on strides."""
    if weight.is_meta:  # shapes only; the meta device runs its ops in Python (1.1 s for a transformer's 500 layers)
        return torch.empty_like(weight, dtype=FP8), torch.empty(1, weight.shape[0], dtype=torch.float32, device="meta")
    fp8, scale = quantize_rows(weight)
    return fp8, scale.reshape(1, -1)


class Float8Linear(nn.Module):
    """An `nn.Linear` whose weight is stored in fp8; inputs are quantized per row at each call."""

    def __init__(self, linear: nn.Linear, device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_weight(linear.weight.detach().to(device))
        self.register_buffer("weight", weight)  # [out, in]: its transpose is the column-major operand _scaled_mm wants
        self.register_buffer("weight_scale", scale)  # [1, out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, row_scale = quantize_rows(x.reshape(-1, self.in_features))
        # Fast accumulation (torchao's inference default): 10-20% faster GEMMs at Flux's shapes on an H100.
        y = torch._scaled_mm(
            rows, self.weight.T, scale_a=row_scale, scale_b=self.weight_scale, out_dtype=x.dtype, use_fast_accum=True
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def stored_in_fp8(layer: str, weight_shape: torch.Size) -> bool:
    """Whether the linear layer named `layer` (in a block, or in the whole transformer), with a weight of this shape
    [out, in], is stored in fp8: all but the modulation layers, where `_scaled_mm`'s shape rule allows."""
    return not layer.endswith(KEPT_IN_BF16) and not (weight_shape[0] % 16 or weight_shape[1] % 16)


def float8_linears(block: nn.Module, device: torch.device) -> None:
    """Swap the linear layers of one transformer block for `Float8Linear` on `device`, in place. The transformer's
    embedders and output projection, outside its blocks, stay in bf16: small, at the model's ends."""
    for name, module in list(block.named_modules()):
        if not isinstance(module, nn.Linear) or not stored_in_fp8(name, module.weight.shape):
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent_name), child, Float8Linear(module, device))
