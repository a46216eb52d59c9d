"""Megatron-style tensor parallelism of the engine's model (one rank's share, in place).

Each of the ``N`` ranks keeps:

- attention: the q/k/v projection rows of its contiguous share of the attention heads and KV
  heads (column parallel), and the matching columns of ``o_proj`` (row parallel);
- MLP: its share of the ``gate_proj``/``up_proj`` rows and the matching ``down_proj`` columns;
- the embedding, the norms and the LM head whole (replicated).

The row-parallel ``o_proj`` and ``down_proj`` sum their partial outputs with an all-reduce
(two per layer), and their bias, if any, is added once after it. Because the sharded layers are
ordinary modules of the HF model, the engine's :class:`~baton_worker.engine.model.PagedModel`
runs them unchanged; the returned :class:`LoadedModel` reports the rank's *local* head counts, so
``KvBlockPool.for_model`` gives the rank's own KV shard ``[L, N, 2, H/N, B, D]``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch import nn

from baton_worker.engine.loader import LoadedModel, ModelShape
from baton_worker.kv.tp_plan import HeadRange, check_tp_size, rank_heads


@dataclass(frozen=True)
class TpRank:
    """Where one rank sits in its TP group, and the model's unsharded shape."""

    rank: int
    tp_size: int
    global_shape: ModelShape

    @property
    def kv_heads(self) -> HeadRange:
        """The global KV heads this rank holds."""
        return rank_heads(self.global_shape.num_kv_heads, self.tp_size, self.rank)


Reduce = Callable[[torch.Tensor], None]  # sums a tensor in place over the ranks


def dist_all_reduce(group: object | None = None) -> Reduce:
    """The in-place sum over ``group`` (None: the default process group)."""

    def reduce(t: torch.Tensor) -> None:
        torch.distributed.all_reduce(t, group=group)

    return reduce


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x @ W_rank^T) + b``: the input's last dim is this rank's slice."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, reduce: Reduce) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        self.reduce(y)
        return y if self.bias is None else y + self.bias


def _rows(linear: nn.Linear, start: int, end: int) -> nn.Linear:
    """A Linear keeping output rows [start, end) (column parallel: no communication)."""
    out = nn.Linear(linear.in_features, end - start, bias=linear.bias is not None)
    out = out.to(dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(linear.weight[start:end])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[start:end])
    return out.requires_grad_(False)


def _cols(linear: nn.Linear, start: int, end: int, reduce: Reduce) -> RowParallelLinear:
    """A row-parallel Linear keeping input columns [start, end)."""
    weight = linear.weight[:, start:end].contiguous().clone()
    # The bias is added once, after the sum of the partial products.
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    return RowParallelLinear(weight, bias, reduce)


def shard_model(model: LoadedModel, rank: int, tp_size: int, reduce: Reduce | None = None) -> LoadedModel:
    """Shard ``model`` in place for ``rank`` of ``tp_size`` and return it with local head counts.

    Raises TpConfigError (naming the numbers) when ``tp_size`` does not divide the KV heads,
    attention heads or MLP width. With ``tp_size == 1`` the model is returned unchanged. The
    partial sums are combined by ``reduce`` (default: all-reduce over the default process group,
    which must be initialised before the first forward).
    """
    reduce = reduce or dist_all_reduce()
    shape = model.shape
    inter = getattr(model.config, "intermediate_size", None)
    check_tp_size("tensorParallelSize", tp_size, shape.num_kv_heads, shape.num_attention_heads, inter)
    if not 0 <= rank < tp_size:
        raise ValueError(f"rank: {rank} outside [0, {tp_size})")
    if tp_size == 1:
        return model
    d = shape.head_dim
    hq, hkv = shape.num_attention_heads // tp_size, shape.num_kv_heads // tp_size
    q0, q1 = rank * hq * d, (rank + 1) * hq * d
    k0, k1 = rank * hkv * d, (rank + 1) * hkv * d
    for layer in model.hf_model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = _rows(attn.q_proj, q0, q1)
        attn.k_proj = _rows(attn.k_proj, k0, k1)
        attn.v_proj = _rows(attn.v_proj, k0, k1)
        attn.o_proj = _cols(attn.o_proj, q0, q1, reduce)
        i = mlp.gate_proj.out_features // tp_size
        mlp.gate_proj = _rows(mlp.gate_proj, rank * i, (rank + 1) * i)
        mlp.up_proj = _rows(mlp.up_proj, rank * i, (rank + 1) * i)
        mlp.down_proj = _cols(mlp.down_proj, rank * i, (rank + 1) * i, reduce)
    local = dataclasses.replace(shape, num_attention_heads=hq, num_kv_heads=hkv)
    return dataclasses.replace(model, shape=local)


def dist_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_rank(
    init_file: str, rank: int, tp_size: int, device: torch.device, timeout_s: float = 120.0
) -> None:
    """Join the TP group through a shared file (all ranks run on one machine).

    Gloo is pinned to the loopback interface unless ``GLOO_SOCKET_IFNAME`` says otherwise: a TP
    group never leaves its pod, and the host name may not resolve to a usable address.
    """
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(
        dist_backend(device),
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=tp_size,
        timeout=timedelta(seconds=timeout_s),
    )
