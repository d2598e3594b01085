"""Text conditioning for the shapes world: a word tokenizer and a small transformer encoder.

The world's language is a few dozen words, so the tokenizer is a fixed word
list built from the world's vocabularies (no download, no BPE); unknown words
map to <unk>. Real models use their own encoders (UMT5 for Wan2.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..worlds.shapes import VALUES

PAD, UNK = "<pad>", "<unk>"
_GLUE = ("a", "an", "the", "moving", "on", "background", "shape", "object", "is", "and", "with", "of", "in")


def shapes_vocabulary() -> list[str]:
    """The fixed word list of the shapes world (index 0 = pad, 1 = unk)."""
    words = [PAD, UNK, *_GLUE]
    for values in VALUES.values():
        words += [v for v in values if v not in words]
    return words


class WordTokenizer:
    """Lower-cases, splits on non-letters, maps words to ids, pads to ``max_len``."""

    def __init__(self, vocab: list[str] | None = None, max_len: int = 16):
        self.vocab = vocab or shapes_vocabulary()
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and a boolean mask (B, L) of real tokens."""
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [self.index.get(w, 1) for w in re.findall(r"[a-z]+", t.lower())][: self.max_len]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return ids, ids != 0


@dataclass
class TextEncoderConfig:
    """A small transformer over word embeddings."""

    dim: int = 128
    """Width of token features handed to cross-attention."""
    layers: int = 2
    """Transformer encoder layers."""
    heads: int = 4
    """Attention heads."""
    max_len: int = 16
    """Longest prompt in words; longer prompts are cut."""


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token features (B, L, dim); padded positions are zeroed."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        # an all-pad prompt (the CFG null prompt) attends to its pads rather than to nothing
        key_pad = ~mask & mask.any(dim=1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=key_pad)
        return self.norm(x) * mask[..., None]
