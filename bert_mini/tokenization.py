"""BERT's WordPiece tokenizer, assembled from `vocab.txt` (or a WordPiece `tokenizer.json`) with `tokenizers`.

The pipeline is the one BERT was trained with:

    normalise (clean control chars, split CJK, lower-case + strip accents when uncased)
    -> pre-tokenise on whitespace and punctuation
    -> WordPiece: greedy longest-match-first into vocabulary pieces ("playing" -> "play", "##ing")
    -> template: [CLS] A [SEP]            token_type_ids 0...0
                 [CLS] A [SEP] B [SEP]    token_type_ids 0...0 1...1

Truncation uses the longest-first rule: while the pair is too long, drop the last token of the longer text.
Padding is dynamic: `pad` pads a batch to its own longest sequence, not to a fixed length.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .checkpoint_files import read_tokenizer_json, tokenizer_casing, vocab_ids, write_tokenizer_files

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Encoding(NamedTuple):
    """One encoded example: token ids and segment ids, both without padding."""

    input_ids: list[int]
    token_type_ids: list[int]


class BertTokenizer:
    """Encode single texts and pairs for BERT; see the module docstring for the pipeline."""

    def __init__(self, vocab_file: str | Path, lowercase: bool = True):
        vocab_file = Path(vocab_file)
        try:
            vocab_bytes = vocab_file.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{vocab_file}: vocabulary file not found") from None
        self._setup(vocab_bytes.decode("utf-8").splitlines(), vocab_bytes, str(vocab_file), lowercase)

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> "BertTokenizer":
        """Read a `tokenizers` file (what transformers 5 saves instead of vocab.txt): BERT's WordPiece only."""
        path = Path(path)
        tokens, lowercase = read_tokenizer_json(path)  # anything but BERT's WordPiece is refused
        tokenizer = cls.__new__(cls)
        tokenizer._setup(tokens, ("\n".join(tokens) + "\n").encode("utf-8"), str(path), lowercase)
        return tokenizer

    def _setup(self, tokens: list[str], vocab_bytes: bytes, source: str, lowercase: bool) -> None:
        """Build the pipeline from the vocabulary (token on line i has id i) and the casing."""
        self.vocab = vocab = vocab_ids(tokens, SPECIAL_TOKENS, source)  # token -> id; duplicates refused
        self.lowercase = lowercase
        self._vocab_bytes = vocab_bytes  # written back byte for byte by `save`
        self.pad_token_id = vocab["[PAD]"]
        self.cls_token_id = vocab["[CLS]"]
        self.sep_token_id = vocab["[SEP]"]
        self.unk_token_id = vocab["[UNK]"]
        digest = hashlib.sha256(vocab_bytes + (b"lower" if lowercase else b"cased")).hexdigest()
        self.fingerprint = digest[:12]

        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0",
            pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)],
        )
        self._tokenizer = tok

    def save(self, directory: str | Path, model_max_length: int = 512) -> None:
        """Write vocab.txt, tokenizer_config.json and special_tokens_map.json into the existing `directory`: what
        `AutoTokenizer` and we read back (`model_max_length`: the model's max_position_embeddings)."""
        write_tokenizer_files(Path(directory), self._vocab_bytes, self.lowercase, model_max_length)

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary."""
        return len(self.vocab)

    def _set_truncation(self, max_length: Optional[int]) -> None:
        if max_length is None:
            self._tokenizer.no_truncation()
        elif max_length < 3:
            raise ValueError(f"max_length must be at least 3 ([CLS] x [SEP]), got {max_length}")
        else:
            self._tokenizer.enable_truncation(max_length, strategy="longest_first")

    def tokenize(self, text: str) -> list[str]:
        """WordPiece pieces of one text, without special tokens and never truncated."""
        self._set_truncation(None)
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode(self, text_a: str, text_b: Optional[str] = None, max_length: Optional[int] = 128) -> Encoding:
        """[CLS] A [SEP] (B [SEP]) truncated longest-first to `max_length` tokens."""
        return self.encode_batch([text_a], None if text_b is None else [text_b], max_length)[0]

    def encode_batch(
        self, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None, max_length: Optional[int] = 128
    ) -> list[Encoding]:
        """Encode many texts (or pairs) at once; the `tokenizers` library spreads the work over threads."""
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise ValueError(f"encode_batch: {len(texts_a)} first texts but {len(texts_b)} second texts")
        self._set_truncation(max_length)
        inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))
        return [Encoding(e.ids, e.type_ids) for e in self._tokenizer.encode_batch(inputs)]

    def pad(self, encodings: Sequence[Encoding]) -> dict[str, torch.Tensor]:
        """Pad a batch to its longest member: input_ids, token_type_ids, attention_mask, each (B, T_max)."""
        if not encodings:
            raise ValueError("pad: empty batch")
        length = max(len(e.input_ids) for e in encodings)
        input_ids = torch.full((len(encodings), length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(encodings), length), dtype=torch.long)
        attention_mask = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, enc in enumerate(encodings):
            n = len(enc.input_ids)
            input_ids[row, :n] = torch.tensor(enc.input_ids)
            token_type_ids[row, :n] = torch.tensor(enc.token_type_ids)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def tokenizer_from_dir(model_dir: str | Path) -> BertTokenizer:
    """Build the tokenizer of a checkpoint directory.

    `vocab.txt` with the casing of `tokenizer_config.json` (do_lower_case); without vocab.txt, the WordPiece
    `tokenizer.json` that transformers 5 writes (any other tokenizer type is refused).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "vocab.txt").is_file() and (model_dir / "tokenizer.json").is_file():
        return BertTokenizer.from_tokenizer_json(model_dir / "tokenizer.json")
    lowercase = tokenizer_casing(model_dir)  # tokenizer_config.json's do_lower_case, else the directory's name
    return BertTokenizer(model_dir / "vocab.txt", lowercase=lowercase)
