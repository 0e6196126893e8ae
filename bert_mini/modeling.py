"""BERT in plain PyTorch (Devlin et al., 2019), small enough to read in one sitting.

    x_0 = LayerNorm(E_word[ids] + E_pos[t] + E_type[seg])            # embeddings
    x_l = Layer_l(x_{l-1})  for each step of the encoder's plan       # post-LN transformer blocks
    pooled = tanh(W_p x_L[:, 0] + b_p)                                # pooler over [CLS]

One departure from the textbook picture, on purpose: the encoder runs an explicit *plan*, a list of
`(layer_index, swap_qk)` steps. The default plan `[(0, False), ..., (L-1, False)]` is plain BERT. A plan may visit a
layer more than once and may run it with its Query and Key projections exchanged; that is how Pea-KD's Shuffled
Parameter Sharing (SPS) is expressed without new modules or parameters (see `pea_kd.sps`).

Four fast paths, each one commented line that says which plain equation it replaces (skip them on a first reading):
* `Dropout` (bert_mini.dropout): nn.Dropout's y = x * m / (1 - p), with masks drawn more cheaply on the CPU.
* the attention kernel: where bert_mini.attention_kernels says so, softmax(Q K^T / sqrt(d_k) + M) V goes to
  PyTorch's fused kernel, the same equation without the explicit matrices below.
* CPU bf16 autocast (bert_mini.autocast_paths): x cast to bf16 once for Q, K and V, and the mask M in bf16, so
  that the attention's softmax and dropout run on the bf16 scores instead of fp32 copies of them.
* `cls_only=True`: the *last* step computes its [CLS] row only, all a classifier reads (the pooler takes x_L[:, 0]);
  keys and values still come from every token. The same equation on fewer rows (tests/test_bert_mini.py).

Module and parameter names mirror the Hugging Face checkpoints (`embeddings.word_embeddings.weight`,
`encoder.layer.0.attention.self.query.weight`, ...), so loading a checkpoint is a plain `load_state_dict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention_kernels import use_fused_kernel
from .autocast_paths import mask_dtype, projection_input
from .checks import check_input_ids, checked_plan
from .config import BertConfig
from .dropout import Dropout  # fast path: nn.Dropout's y = x * m / (1 - p), with cheaper CPU masks (bert_mini.dropout)

Plan = list[tuple[int, bool]]


@dataclass
class BertOutput:
    """What a forward pass returns. `hidden_states`/`attentions` are None unless asked for."""

    last_hidden_state: torch.Tensor  # (B, T, H); (B, 1, H), the [CLS] row only, when called with cls_only=True
    pooler_output: torch.Tensor  # (B, H)
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None  # embeddings + one (B, T, H) per plan step
    attentions: Optional[tuple[torch.Tensor, ...]] = None  # one (B, A, T, T) per plan step
    logits: Optional[torch.Tensor] = None  # (B, num_labels), set by BertForSequenceClassification


class BertEmbeddings(nn.Module):
    """x_0 = LayerNorm(E_word[ids] + E_pos[0..T-1] + E_type[token_type_ids]), then dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # E_word[ids] + E_pos[t]
        x = x + self.token_type_embeddings(token_type_ids)  # + E_type[seg]   (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate `query`, `key`, `value` projections.

    softmax(Q K^T / sqrt(d_k) + mask) V, per head. With `swap_qk=True` the two projections trade places for this
    call only: Q = key(x), K = query(x) (weights *and* biases), which is SPS's "shuffle".
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)  # (B, A, T, d_k)

    def forward(self, x: torch.Tensor, additive_mask: Optional[torch.Tensor], swap_qk: bool = False,
                output_attentions: bool = False, cls_only: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        query_proj, key_proj = (self.key, self.query) if swap_qk else (self.query, self.key)
        x16 = projection_input(x)  # fast path: under CPU bf16 autocast x is cast once for Q, K, V (autocast_paths)
        queries = x[:, :1] if cls_only else x16  # fast path cls_only: only the [CLS] row asks (instead of all T rows)
        q = self._split_heads(query_proj(queries))  # Q = x W_q + b_q   (B, A, T, d_k); T = 1 when cls_only
        k = self._split_heads(key_proj(x16))  # K = x W_k + b_k   every token answers
        v = self._split_heads(self.value(x16))  # V = x W_v + b_v
        dropout_p = self.dropout_prob if self.training else 0.0
        if use_fused_kernel(q, dropout_p, output_attentions):  # fast path: the equation below in PyTorch's fused kernel
            context, probs = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask, dropout_p=dropout_p), None
        else:
            scores = (q / math.sqrt(self.head_size)) @ k.transpose(-1, -2)  # Q K^T / sqrt(d_k)   (B, A, T, T)
            if additive_mask is not None:  # + M (None: no position is padded)
                scores = scores + additive_mask
            probs = scores.softmax(dim=-1)  # P = softmax(Q K^T / sqrt(d_k) + M)
            context = self.dropout(probs) @ v  # P V
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, -1), probs  # concat heads (B, T, H)


class BertSelfOutput(nn.Module):
    """x + Attn(x) -> LayerNorm: the attention sub-layer's projection and post-LN residual."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(context)))  # LN(x + dropout(W_o c + b_o))


class BertAttention(nn.Module):
    """Self-attention followed by its output projection and residual LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, additive_mask, swap_qk=False, output_attentions=False, cls_only=False):
        context, probs = self.self(x, additive_mask, swap_qk, output_attentions, cls_only)
        return self.output(context, x[:, :1] if cls_only else x), probs  # cls_only: the [CLS] row's residual only


class BertIntermediate(nn.Module):
    """The feed-forward expansion GELU(x W_1 + b_1) with exact (erf) GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # GELU(z) = z * Phi(z)


class BertOutputLayer(nn.Module):
    """The feed-forward contraction and post-LN residual: LN(x + dropout(W_2 u + b_2))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, u: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(u)))


class BertLayer(nn.Module):
    """One transformer block: attention sub-layer then feed-forward sub-layer, each with a post-LN residual."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutputLayer(config)

    def forward(self, x, additive_mask, swap_qk=False, output_attentions=False, cls_only=False):
        h, probs = self.attention(x, additive_mask, swap_qk, output_attentions, cls_only)
        return self.output(self.intermediate(h), h), probs


class BertEncoder(nn.Module):
    """A stack of `BertLayer`s run according to `plan`, a list of (layer_index, swap_qk) steps."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self._plan: Plan = [(i, False) for i in range(config.num_hidden_layers)]

    @property
    def plan(self) -> Plan:
        """The execution plan: step k runs `layer[plan[k][0]]`, with Q/K swapped when `plan[k][1]` is True."""
        return list(self._plan)

    @plan.setter
    def plan(self, steps: Sequence[tuple[int, bool]]) -> None:
        self._plan = checked_plan(steps, len(self.layer))  # (int, bool) steps naming existing layers

    def forward(self, x, additive_mask, output_hidden_states=False, output_attentions=False, cls_only=False):
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        last = len(self._plan) - 1
        for step, (index, swap_qk) in enumerate(self._plan):
            # cls_only: the last step computes its [CLS] row only, (B, 1, H); no later step reads the others
            x, probs = self.layer[index](x, additive_mask, swap_qk, output_attentions, cls_only and step == last)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probs)
        return x, hidden_states, attentions


class BertPooler(nn.Module):
    """pooled = tanh(W_p h_[CLS] + b_p)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))  # (B, H)


class BertPreTrainedModel(nn.Module):
    """Shared initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm (as BERT)."""

    config: BertConfig

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask M: 0 where attended, the dtype's minimum where padded.

    None when nothing is padded: M would be all zeros, and adding it is a pass over every (B, A, T, T) score."""
    if bool(attention_mask.all()):
        return None
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BertModel(BertPreTrainedModel):
    """The BERT encoder with pooler. Call it with token ids; get `BertOutput`."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, output_hidden_states: bool = False,
                output_attentions: bool = False, cls_only: bool = False) -> BertOutput:
        """input_ids (B, T); attention_mask (B, T) with 1 for real tokens; token_type_ids (B, T) segment ids.

        cls_only=True: the last layer computes its [CLS] row only (module docstring), so `last_hidden_state` and the
        last of `hidden_states` are (B, 1, H) and the last of `attentions` (B, A, 1, T); the pooled output is the same.
        """
        check_input_ids(input_ids, self.config.max_position_embeddings)  # (B, T), T within the positions
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        # (B, 1, 1, T), or None without padding; fast path: bf16 under CPU bf16 autocast, as the scores (autocast_paths)
        mask = extended_attention_mask(attention_mask, mask_dtype(x))
        x, hidden_states, attentions = self.encoder(x, mask, output_hidden_states, output_attentions, cls_only)
        return BertOutput(last_hidden_state=x, pooler_output=self.pooler(x),
                          hidden_states=tuple(hidden_states) if hidden_states is not None else None,
                          attentions=tuple(attentions) if attentions is not None else None)


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT + dropout + linear head on the pooled [CLS]: logits = W_c dropout(pooled) + b_c.

    `num_labels == 1` makes it a regressor (STS-B): the single logit is the predicted score.
    """

    def __init__(self, config: BertConfig, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, output_hidden_states: bool = False,
                output_attentions: bool = False, cls_only: bool = False) -> BertOutput:
        """Same inputs as `BertModel.forward`; the output also carries `logits` (B, num_labels), which cls_only=True
        leaves unchanged (they read the [CLS] row only) at less cost: what training and evaluation pass."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions, cls_only)
        out.logits = self.classifier(self.dropout(out.pooler_output))
        return out
