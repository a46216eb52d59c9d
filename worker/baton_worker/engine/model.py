"""The model forward over the paged KV pool, written on top of the HF module weights.

HF's own attention keeps a per-request cache; here every layer writes K/V into the pool's blocks
and reads them back through block tables, so sequences of any length share one batch and a KV
cache pulled from another worker is used in place. The arithmetic mirrors transformers'
Llama/Qwen2/Mistral forward (RMSNorm, rotary embedding, grouped-query attention, SwiGLU MLP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from baton_worker.engine.kv_pool import KvBlockPool
from baton_worker.engine.loader import LoadedModel


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class PagedModel:
    """Prefill and decode forwards of ``model`` whose KV lives in ``pool``.

    Not thread-safe: one runner (prefill runner or decode engine) drives one PagedModel.
    """

    def __init__(self, model: LoadedModel, pool: KvBlockPool) -> None:
        shape = model.shape
        if (pool.num_layers, pool.num_kv_heads, pool.head_dim) != (
            shape.num_layers,
            shape.num_kv_heads,
            shape.head_dim,
        ):
            raise ValueError(
                f"pool: shape (layers {pool.num_layers}, kv heads {pool.num_kv_heads}, head dim "
                f"{pool.head_dim}) does not match the model ({shape.num_layers}, {shape.num_kv_heads}, "
                f"{shape.head_dim})"
            )
        if pool.device != model.device or pool.dtype != model.dtype:
            raise ValueError(
                f"pool: {pool.dtype} on {pool.device} but the model is {model.dtype} on {model.device}"
            )
        self.model = model
        self.pool = pool
        hf = model.hf_model
        self._inner = hf.model
        self._lm_head = hf.lm_head
        self._layers = list(hf.model.layers)
        self._hq = shape.num_attention_heads
        self._hkv = shape.num_kv_heads
        self._d = shape.head_dim
        self._scale = getattr(self._layers[0].self_attn, "scaling", self._d**-0.5)
        self.device = model.device

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # HF's rotary module handles every rope_type (llama3 scaling, yarn, ...) for us.
        cos, sin = self._inner.rotary_emb(x, positions)
        return cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, D], broadcast over heads

    def _qkv(self, layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attn = layer.self_attn
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, self._hq, self._d).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self._hkv, self._d).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self._hkv, self._d).transpose(1, 2)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _finish_layer(self, layer: torch.nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn_out.shape
        x = x + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(b, t, self._hq * self._d))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def prefill(
        self, token_ids: list[list[int]], block_tables: list[list[int]], starts: Sequence[int] = ()
    ) -> torch.Tensor:
        """Run whole prefixes, write their KV into their blocks, return the float32 logits of
        each sequence's last token, shape ``[B, vocab]``. ``starts[b]`` tokens of sequence ``b``
        (a whole number of blocks) already have their KV in its first blocks (a prefix cache
        hit): only the rest is computed, attending to the cached KV."""
        return self.prefill_full(token_ids, block_tables, (), starts)[0]

    def prefill_full(
        self,
        token_ids: list[list[int]],
        block_tables: list[list[int]],
        keep: Sequence[bool],
        starts: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """:meth:`prefill`, plus the float32 logits of every position ``[T, vocab]`` of the
        sequences whose ``keep`` flag is set (for prompt logprobs; None for the others). A
        sequence that keeps its logits must start at 0."""
        starts = list(starts) or [0] * len(token_ids)
        if not any(starts):
            return self._prefill_from_zero(token_ids, block_tables, keep)
        keep = list(keep) + [False] * (len(token_ids) - len(keep))
        if not any(keep):
            return self._prefill_after_cached(token_ids, block_tables, starts), []
        if any(k and s for k, s in zip(keep, starts, strict=True)):
            raise ValueError("starts: a sequence keeping every position's logits must start at 0")
        whole = [i for i, s in enumerate(starts) if s == 0]
        rest = [i for i, s in enumerate(starts) if s > 0]
        logits, part = self._prefill_from_zero(
            [token_ids[i] for i in whole], [block_tables[i] for i in whole], [keep[i] for i in whole]
        )
        more = self._prefill_after_cached(
            [token_ids[i] for i in rest], [block_tables[i] for i in rest], [starts[i] for i in rest]
        )
        rows = {i: logits[k] for k, i in enumerate(whole)} | {i: more[k] for k, i in enumerate(rest)}
        full: list[torch.Tensor | None] = [None] * len(token_ids)
        for k, i in enumerate(whole):
            full[i] = part[k]
        return torch.stack([rows[i] for i in range(len(token_ids))]), full

    @torch.inference_mode()
    def _prefill_after_cached(
        self, token_ids: list[list[int]], block_tables: list[list[int]], starts: Sequence[int]
    ) -> torch.Tensor:
        bsz = len(token_ids)
        bs = self.pool.block_size
        lens = [len(t) for t in token_ids]
        for i, (n, start, table) in enumerate(zip(lens, starts, block_tables, strict=True)):
            if start % bs or not 0 <= start < n:
                raise ValueError(f"starts[{i}]: {start} is not a block boundary below {n} tokens")
            if len(table) < self.pool.blocks_needed(n):
                raise ValueError(f"block_tables[{i}]: {len(table)} blocks cannot hold {n} tokens")
        dev = self.device
        new = [n - s for n, s in zip(lens, starts, strict=True)]
        tmax = max(new)
        ids = torch.zeros((bsz, tmax), dtype=torch.long)
        for i, (t, s) in enumerate(zip(token_ids, starts, strict=True)):
            ids[i, : len(t) - s] = torch.tensor(t[s:], dtype=torch.long)
        ids = ids.to(dev)
        offs = torch.tensor(list(starts), device=dev).unsqueeze(1)
        positions = offs + torch.arange(tmax, device=dev).unsqueeze(0)  # [B, T]
        valid = torch.arange(tmax, device=dev).unsqueeze(0) < torch.tensor(new, device=dev).unsqueeze(1)
        blk = torch.tensor(
            [tbl[p // bs] for tbl, n, s in zip(block_tables, lens, starts, strict=True) for p in range(s, n)],
            dtype=torch.long,
            device=dev,
        )
        slot = torch.tensor(
            [p % bs for n, s in zip(lens, starts, strict=True) for p in range(s, n)], device=dev
        )
        # Every sequence's context, read back from its blocks: [B, W] block ids (padded with
        # its own first block), keys at positions < its length and <= the query's position.
        width = self.pool.blocks_needed(max(lens))
        table = torch.tensor(
            [
                tbl[: self.pool.blocks_needed(n)] + [tbl[0]] * (width - self.pool.blocks_needed(n))
                for tbl, n in zip(block_tables, lens, strict=True)
            ],
            dtype=torch.long,
            device=dev,
        ).reshape(-1)
        key_pos = torch.arange(width * bs, device=dev)
        mask = (key_pos.view(1, 1, -1) <= positions.unsqueeze(2)) & (
            key_pos.view(1, 1, -1) < torch.tensor(lens, device=dev).view(bsz, 1, 1)
        )
        mask = mask.unsqueeze(1)  # [B, 1, T, ctx]
        x = self._inner.embed_tokens(ids)
        cos, sin = self._rotary(x, positions)
        storage = self.pool.storage
        hkv, d = self._hkv, self._d
        for li, layer in enumerate(self._layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            storage[li, blk, 0, :, slot, :] = k.transpose(1, 2)[valid]
            storage[li, blk, 1, :, slot, :] = v.transpose(1, 2)[valid]
            # [B*W, H, bs, D] -> [B, H, W*bs, D]
            keys = storage[li, :, 0].index_select(0, table).view(bsz, width, hkv, bs, d)
            vals = storage[li, :, 1].index_select(0, table).view(bsz, width, hkv, bs, d)
            keys = keys.permute(0, 2, 1, 3, 4).reshape(bsz, hkv, width * bs, d)
            vals = vals.permute(0, 2, 1, 3, 4).reshape(bsz, hkv, width * bs, d)
            out = F.scaled_dot_product_attention(
                q, keys, vals, attn_mask=mask, scale=self._scale, enable_gqa=True
            )
            x = self._finish_layer(layer, x, out)
        last = x[torch.arange(bsz, device=dev), torch.tensor(new, device=dev) - 1]
        return self._lm_head(self._inner.norm(last)).float()

    @torch.inference_mode()
    def _prefill_from_zero(
        self, token_ids: list[list[int]], block_tables: list[list[int]], keep: Sequence[bool]
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        bsz = len(token_ids)
        lens = [len(t) for t in token_ids]
        tmax = max(lens)
        bs = self.pool.block_size
        for i, (n, table) in enumerate(zip(lens, block_tables, strict=True)):
            if len(table) < self.pool.blocks_needed(n):
                raise ValueError(f"block_tables[{i}]: {len(table)} blocks cannot hold {n} tokens")
        dev = self.device
        ids = torch.zeros((bsz, tmax), dtype=torch.long)
        for i, t in enumerate(token_ids):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        ids = ids.to(dev)
        positions = torch.arange(tmax, device=dev).unsqueeze(0).expand(bsz, tmax)
        valid = positions < torch.tensor(lens, device=dev).unsqueeze(1)  # [B, T]
        blk = torch.tensor(
            [table[p // bs] for table, n in zip(block_tables, lens, strict=True) for p in range(n)],
            dtype=torch.long,
            device=dev,
        )
        slot = torch.tensor([p % bs for n in lens for p in range(n)], dtype=torch.long, device=dev)
        mask = None
        if bsz > 1 and min(lens) != tmax:
            causal = torch.ones((tmax, tmax), dtype=torch.bool, device=dev).tril()
            mask = (causal.unsqueeze(0) & valid.unsqueeze(1)).unsqueeze(1)  # [B, 1, T, T]
        x = self._inner.embed_tokens(ids)
        cos, sin = self._rotary(x, positions)
        storage = self.pool.storage
        for li, layer in enumerate(self._layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            # [B, H, T, D] -> the valid tokens in order, [N, H, D]
            storage[li, blk, 0, :, slot, :] = k.transpose(1, 2)[valid]
            storage[li, blk, 1, :, slot, :] = v.transpose(1, 2)[valid]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=self._scale, enable_gqa=True
            )
            x = self._finish_layer(layer, x, out)
        last = x[torch.arange(bsz, device=dev), torch.tensor(lens, device=dev) - 1]  # [B, hidden]
        full: list[torch.Tensor | None] = [
            self._lm_head(self._inner.norm(x[i, : lens[i]])).float() if i < len(keep) and keep[i] else None
            for i in range(bsz)
        ]
        return self._lm_head(self._inner.norm(last)).float(), full

    def _paged_attention(
        self, q: torch.Tensor, layer: int, flat_table: torch.Tensor, bias: torch.Tensor, bsz: int, nblk: int
    ) -> torch.Tensor:
        """Attention of one query per sequence over its blocks, computed in block layout.

        K and V are gathered once each (a plain copy of whole blocks); the matmuls then run on
        ``[B, W, H, bs, D]`` directly, so no further copy of the context is made. Grouped-query
        heads are folded into the query dimension. Returns ``[B, Hq, 1, D]``."""
        bs, hkv, d = self.pool.block_size, self._hkv, self._d
        group = self._hq // hkv
        storage = self.pool.storage[layer]
        keys = storage[:, 0].index_select(0, flat_table).view(bsz, nblk, hkv, bs, d)
        vals = storage[:, 1].index_select(0, flat_table).view(bsz, nblk, hkv, bs, d)
        qg = q.reshape(bsz, 1, hkv, group, d)
        scores = torch.matmul(qg, keys.transpose(-1, -2))  # [B, W, H, G, bs]
        scores = scores.permute(0, 2, 3, 1, 4).reshape(bsz, hkv, group, nblk * bs)
        scores = scores.float() * self._scale + bias  # bias [B, 1, 1, ctx]: 0 or -inf
        probs = torch.softmax(scores, dim=-1).to(vals.dtype)
        probs = probs.view(bsz, hkv, group, nblk, bs).permute(0, 3, 1, 2, 4)  # [B, W, H, G, bs]
        out = torch.matmul(probs, vals).sum(dim=1)  # [B, H, G, D]
        return out.reshape(bsz, self._hq, 1, d)

    @torch.inference_mode()
    def decode(
        self, token_ids: torch.Tensor, positions: torch.Tensor, block_table: torch.Tensor
    ) -> torch.Tensor:
        """One decode step for ``B`` sequences: token ``token_ids[b]`` sits at ``positions[b]``
        (so its context is ``positions[b] + 1`` tokens); ``block_table[b]`` lists the blocks of
        sequence ``b`` padded with any valid id. Writes the new K/V, returns float32 logits [B, vocab]."""
        dev = self.device
        bsz = token_ids.shape[0]
        bs = self.pool.block_size
        nblk = block_table.shape[1]
        token_ids = token_ids.to(dev)
        positions = positions.to(dev)
        block_table = block_table.to(dev)
        rows = torch.arange(bsz, device=dev)
        blk = block_table[rows, positions // bs]
        slot = positions % bs
        ctx = nblk * bs
        valid = torch.arange(ctx, device=dev).unsqueeze(0) <= positions.unsqueeze(1)  # [B, ctx]
        bias = torch.zeros((bsz, 1, 1, ctx), dtype=torch.float32, device=dev)
        bias.masked_fill_(~valid.view(bsz, 1, 1, ctx), float("-inf"))
        flat_table = block_table.reshape(-1)
        x = self._inner.embed_tokens(token_ids.unsqueeze(1))  # [B, 1, hidden]
        cos, sin = self._rotary(x, positions.unsqueeze(1))
        storage = self.pool.storage
        for li, layer in enumerate(self._layers):
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            storage[li, blk, 0, :, slot, :] = k[:, :, 0, :]
            storage[li, blk, 1, :, slot, :] = v[:, :, 0, :]
            out = self._paged_attention(q, li, flat_table, bias, bsz, nblk)
            x = self._finish_layer(layer, x, out)
        return self._lm_head(self._inner.norm(x[:, 0])).float()
