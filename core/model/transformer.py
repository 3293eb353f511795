"""The DeepSeek-V3.2 decoder: embedding, blocks, final norm, LM head; prefill
(with or without a cached prefix), decode, greedy generation."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ValidationError
from .config import INDEXER_PRECISIONS, ModelConfig, load_config
from . import parallel as par_mod
from .layers import MLA, Batch, Block, RMSNorm, frozen_param
from .parallel import Parallel
from ..registry import OpTable, resolve


class Decoder(nn.Module):
    def __init__(self, ops: OpTable, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        vocab = par_mod.shard(cfg.vocab_size, parallel.layout.tp, "vocab_size", False) if parallel is not None else cfg.vocab_size
        self.embed_tokens = nn.Embedding(vocab, cfg.dim, dtype=dtype)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(Block(ops, cfg, i, dtype, parallel) for i in range(cfg.n_layers))
        self.norm = RMSNorm(ops, cfg.dim, cfg.rms_eps)


class Model(nn.Module):
    """``Model(cfg, ops)(tokens [B, S]) -> logits [B, S, vocab]``.

    The KV caches (latent MLA cache and FP8 indexer key cache) are allocated
    by :meth:`reset` and filled as tokens arrive; ``start_pos`` > 0 continues
    a sequence whose first ``start_pos`` tokens are already cached.

    With ``parallel`` (see :mod:`.parallel`) this process is one rank of a
    tensor/expert-parallel world: it holds only its shards, every rank takes
    the same tokens and returns the same logits.
    """

    def __init__(self, cfg: ModelConfig, ops: OpTable, dtype: torch.dtype = torch.float32, parallel: Parallel | None = None):
        super().__init__()
        if parallel is not None:
            parallel.layout.check(cfg)
        self.cfg, self.ops, self.dtype, self.parallel = cfg, ops, dtype, parallel or par_mod.single()
        self.model = Decoder(ops, cfg, dtype, parallel)
        self.lm_head = nn.Module()
        self.lm_head.weight = frozen_param(self.model.embed_tokens.weight.shape[0], cfg.dim, dtype=dtype)
        self.freqs = ops.yarn_freqs(cfg.qk_rope_head_dim, float(cfg.rope_theta), float(cfg.rope_factor) if cfg.yarn else 1.0,
                                    cfg.original_seq_len, cfg.beta_fast, cfg.beta_slow)
        self.batch = self.capacity = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "torch", dtype: torch.dtype | None = None,
                        dequantize: bool = False, ops: OpTable | None = None, indexer: str = "auto",
                        kv_cache: str = "float", moe: str = "experts", index_cache: str = "paged",
                        parallel: Parallel | None = None) -> Model:
        """Load a Hugging Face-format checkpoint (config.json + safetensors).

        FP8 weights stay FP8 (act_quant + fp8_gemm) unless ``dequantize``.
        ``indexer``: ``auto`` scores as the checkpoint's authors do (FP8 with a
        ``quantization_config``, float without one), ``fp8`` or ``float`` force it.
        ``kv_cache``: ``float`` (the model dtype) or ``fp8`` (FlashMLA's 656-byte
        latent rows). ``moe``: ``experts`` (one moe_experts call) or ``grouped``
        (DeepGEMM-style grouped GEMMs). ``index_cache``: ``paged`` (FP8 128-dim
        keys with ue8m0 scales in DeepGEMM's paged layout, where they apply) or
        ``flat`` (one FP8 key cache and a scale per token). ``parallel``: this
        process's rank of a tensor/expert-parallel world (it reads only its shards)."""
        from dataclasses import replace

        from .weights import load_weights

        choices = {"indexer": (indexer, INDEXER_PRECISIONS), "kv_cache": (kv_cache, ("float", "fp8")), "moe": (moe, ("experts", "grouped")),
                   "index_cache": (index_cache, ("paged", "flat"))}
        for key, (v, valid) in choices.items():
            if v not in valid:
                raise ConfigError(f"Model.from_pretrained: {key}: expected one of {list(valid)}, got {v!r}")
        cfg = load_config(path)
        index_fp8 = cfg.index_fp8 if indexer == "auto" else indexer == "fp8"
        cfg = replace(cfg, index_fp8=index_fp8, kv_cache_fp8=kv_cache == "fp8", moe_grouped_gemm=moe == "grouped",
                      index_paged=index_cache == "paged")
        if dequantize:
            cfg = replace(cfg, fp8_weights=False)
        ops = ops or resolve(backend)
        dtype = dtype or (torch.float64 if backend == "reference" else torch.float32)
        model = cls(cfg, ops, dtype, parallel)
        load_weights(model, Path(path))
        return model

    def reset(self, batch: int, capacity: int) -> None:
        """Allocate empty caches for ``batch`` sequences of up to ``capacity`` tokens."""
        capacity = -(-capacity // MLA.BLOCK_SIZE) * MLA.BLOCK_SIZE
        device = self.lm_head.weight.device
        for layer in self.model.layers:
            layer.self_attn.allocate(batch, capacity, device, self.dtype)
        self.batch, self.capacity = batch, capacity

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValidationError("Model.forward", "tokens", "input ids of shape [B, S]", tuple(tokens.shape))
        tokens = par_mod.batch_share(tokens, self.parallel)  # data-parallel attention: this group's sequences
        bsz, seqlen = tokens.shape
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValidationError("Model.forward", "tokens", "integer token ids", str(tokens.dtype).removeprefix("torch."))
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.cfg.vocab_size)]
            raise ValidationError("Model.forward", "tokens", f"token ids in [0, vocab_size = {self.cfg.vocab_size})",
                                  f"{bad.numel()} id(s) outside it, e.g. {bad[:4].tolist()}")
        if start_pos == 0 and (bsz != self.batch or seqlen > self.capacity):
            self.reset(bsz, max(seqlen, self.capacity))
        if bsz != self.batch or start_pos + seqlen > self.capacity:
            raise ValidationError("Model.forward", "tokens", f"batch {self.batch} and start_pos + S <= {self.capacity} "
                                  "(call reset(batch, capacity) first)", f"batch {bsz}, start_pos + S = {start_pos + seqlen}")
        b = Batch(start_pos, seqlen, bsz, self.capacity, self.freqs)
        h, residual = par_mod.embed(tokens.reshape(-1), self.model.embed_tokens.weight, self.parallel), None
        for layer in self.model.layers:
            h, residual = layer(h, residual, b)
        h, _ = self.model.norm(h, residual)
        logits = par_mod.lm_head(h.to(self.lm_head.weight.dtype), self.lm_head.weight, self.parallel)
        return par_mod.gather_batch(logits.view(bsz, seqlen, -1).float(), self.parallel)

    @torch.inference_mode()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with the KV cache: prefill the prompt, then one token per step."""
        bsz, n = tokens.shape
        self.reset(bsz, n + max_new_tokens)
        out = [tokens]
        nxt = self(tokens)[:, -1].argmax(-1, keepdim=True)
        for i in range(max_new_tokens):
            out.append(nxt)
            if i + 1 < max_new_tokens:
                nxt = self(nxt, n + i)[:, -1].argmax(-1, keepdim=True)
        return torch.cat(out, dim=1)
