"""The NF4 transformer's feed-forward layers in pieces along their hidden features, for the 12 GB mode's memory.

bitsandbytes (0.50) runs an NF4 layer on more than one token by dequantizing its whole weight to bf16, then
multiplying. At 1024x1024 (4352 tokens) the transformer's activations peaked at 285 MiB above its weights (NVIDIA
H200), in a single block: its MLP's hidden features (102 MiB) and the concatenation of attention and MLP that its
output projection takes (127.5 MiB) were alive together (docs/performance.md). In pieces, each piece's hidden
features and dequantized weights are a fraction of the whole, and the output projection is applied to the
attention and to each MLP piece and summed, so nothing is concatenated. The same weights are dequantized per call.

A piece is requantized from its slice of the weight as bitsandbytes dequantizes it for a matmul (in the compute
dtype, bf16): each block's 4-bit codes come back, its scale within that rounding, and with double quantization the
scales' own 8-bit constants are recomputed for the piece.
"""

import types

import bitsandbytes as bnb
import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

PIECES = 2


def nf4_piece(layer: bnb.nn.Linear4bit, rows: slice, columns: slice, bias: bool) -> bnb.nn.Linear4bit:
    """An NF4 layer computing `layer`'s weight[rows, columns], quantized as `layer` is, with its bias[rows] if
    `bias`."""
    weight = layer.weight
    dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)[rows, columns].contiguous()
    piece = bnb.nn.Linear4bit(
        dense.shape[1],
        dense.shape[0],
        bias=bias,
        compute_dtype=layer.compute_dtype,
        compress_statistics=weight.compress_statistics,
        quant_type=weight.quant_type,
        device="meta",
    )
    piece.weight = bnb.nn.Params4bit(
        dense,
        requires_grad=False,
        blocksize=weight.blocksize,
        compress_statistics=weight.compress_statistics,
        quant_type=weight.quant_type,
        module=piece,
    ).to(dense.device)  # quantizes
    if bias:
        piece.bias = torch.nn.Parameter(layer.bias[rows].detach().clone(), requires_grad=False)
    return piece


class FeedForwardInPieces(torch.nn.Module):
    """`down(activation(up(x)))` over `pieces` slices of the hidden features, summed. `down`'s hidden features
    start at its input column `start` (a single block's output projection takes the attention's features first);
    its bias, with `bias`, is added once."""

    def __init__(
        self,
        up: bnb.nn.Linear4bit,
        down: bnb.nn.Linear4bit,
        activation: torch.nn.Module,
        pieces: int,
        start: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden = up.out_features
        if hidden % pieces:
            raise ValueError(f"{hidden} hidden features do not split into {pieces} pieces")
        size = hidden // pieces
        self.activation = activation
        self.up = torch.nn.ModuleList(
            nf4_piece(up, slice(i * size, (i + 1) * size), slice(None), bias=up.bias is not None) for i in range(pieces)
        )
        self.down = torch.nn.ModuleList(
            nf4_piece(down, slice(None), slice(start + i * size, start + (i + 1) * size), bias=bias and i == 0)
            for i in range(pieces)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = None
        for up, down in zip(self.up, self.down, strict=True):
            part = down(self.activation(up(hidden_states)))
            out = part if out is None else out + part
        return out


def single_block_forward(
    self: FluxSingleTransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    joint_attention_kwargs: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' `FluxSingleTransformerBlock.forward` (0.42) with its output projection applied to the attention
    (`attn_out`) and to the MLP (`mlp`, in pieces) separately and summed, instead of to their concatenation."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_output = self.mlp(norm_hidden_states)
    attn_output = self.attn(
        hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {})
    )
    hidden_states = residual + gate.unsqueeze(1) * (self.attn_out(attn_output) + mlp_output)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def feed_forward_in_pieces(transformer: torch.nn.Module, pieces: int = PIECES) -> None:
    """In every block of an NF4 FluxTransformer2DModel, in place: the image tokens' feed-forward, and a single block's
    MLP with its output projection, in `pieces` (the text tokens' feed-forward, 256 tokens, is left whole)."""
    for block in transformer.modules():
        if isinstance(block, FluxTransformerBlock):
            up, down = block.ff.net[0].proj, block.ff.net[2]
            block.ff = FeedForwardInPieces(up, down, torch.nn.GELU(block.ff.net[0].approximate), pieces)
            release(up, down)
        elif isinstance(block, FluxSingleTransformerBlock):
            attention = block.proj_out.in_features - block.mlp_hidden_dim  # the attention's output features
            block.mlp = FeedForwardInPieces(
                block.proj_mlp, block.proj_out, block.act_mlp, pieces, start=attention, bias=False
            )
            block.attn_out = nf4_piece(block.proj_out, slice(None), slice(0, attention), bias=True)
            release(block.proj_mlp, block.proj_out)
            del block.proj_mlp, block.act_mlp, block.proj_out
            # An instance's forward: compile_repeated_blocks finds the blocks to compile by their class's name.
            block.forward = types.MethodType(single_block_forward, block)


def release(*layers: bnb.nn.Linear4bit) -> None:
    """Let replaced layers be freed as soon as nothing uses them: a bitsandbytes weight points back to its layer, a
    cycle that only the garbage collector breaks, and until it ran the load held both the layers and their pieces
    (2.26 GiB more for FLUX, NVIDIA H200)."""
    for layer in layers:
        layer.weight.module = None
