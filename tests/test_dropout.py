"""bert_mini.dropout: nn.Dropout's equation with masks from raw random words, tested against torch's own dropout.

Equal where it can be equal (the same mask gives F.dropout's output and gradient bit for bit; a model whose masks are
drawn the way nn.Dropout draws them trains bit-identically to one built from nn.Dropout), and equal in distribution
where the masks differ: kept fraction 1 - p within a binomial bound, independence between positions and between
calls, the same seed giving the same masks and another seed other ones.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bert_mini.dropout as dropout_module
import bert_mini.attention_kernels as kernels
import bert_mini.modeling as modeling
from bert_mini import BertConfig, BertForSequenceClassification
from bert_mini.dropout import Dropout, dropout, keep_mask

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40)


def within_binomial(count: int, n: int, q: float, sigmas: float = 6.0) -> bool:
    """|count - n q| <= sigmas * sqrt(n q (1 - q)): a Binomial(n, q) count misses this with probability < 1e-8."""
    return abs(count - n * q) <= sigmas * math.sqrt(n * q * (1 - q))


def bernoulli_masks(shape, p, device="cpu", generator=None, dtype=torch.bool):
    """The mask torch's CPU F.dropout draws from the same generator state: bernoulli_(1 - p) of a float tensor."""
    return torch.empty(shape).bernoulli_(1 - p, generator=generator).bool().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_same_mask_gives_torch_dropouts_output_and_gradient_bit_for_bit(monkeypatch, dtype, p):
    x = (torch.rand(6, 7, 8) + 0.5).to(dtype).requires_grad_()  # no zeros: F.dropout's mask is where y != 0
    upstream = torch.randn(6, 7, 8).to(dtype)
    reference = F.dropout(x, p, training=True)
    (reference_grad,) = torch.autograd.grad(reference, x, upstream)
    mask = reference.detach() != 0
    monkeypatch.setattr(dropout_module, "keep_mask", lambda shape, p_, *a, dtype=torch.bool, **k: mask.to(dtype))
    ours = dropout(x, p)
    (ours_grad,) = torch.autograd.grad(ours, x, upstream)
    assert torch.equal(ours, reference) and torch.equal(ours_grad, reference_grad)
    scale = torch.ones((), dtype=dtype).div_(1 - p)  # 1 / (1 - p) as torch rounds it in x's dtype
    assert torch.equal(ours[mask], x[mask] * scale) and not ours[~mask].any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_one_minus_p_and_positions_are_independent(p):
    torch.manual_seed(0)
    n = 1 << 22
    m = keep_mask((n,), p)
    assert m.dtype == torch.bool and within_binomial(int(m.sum()), n, 1 - p)
    q = (1 - p) ** 2  # both kept, if independent
    # the two 32-bit halves of one 64-bit draw, neighbours across draws, far-apart positions, and the next call
    pairs = {"same draw": (m[0::2], m[1::2]), "next draw": (m[1:-1:2], m[2::2]),
             "far apart": (m[: n // 2], m[n // 2:]), "next call": (m, keep_mask((n,), p))}
    for name, (a, b) in pairs.items():
        assert within_binomial(int((a & b).sum()), len(a), q), name


def test_masks_follow_torch_seed_and_rng_state_and_not_the_thread_count():
    torch.manual_seed(3)
    first, second = keep_mask((1000,), 0.1), keep_mask((1000,), 0.1)
    assert not torch.equal(first, second)  # every call draws a new mask
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert torch.equal(keep_mask((1000,), 0.1), first)  # same seed, same mask
    torch.set_num_threads(2)
    try:
        torch.set_rng_state(state)
        assert torch.equal(keep_mask((1000,), 0.1), first)  # random_ is sequential: threads change nothing
    finally:
        torch.set_num_threads(1)
    assert torch.equal(keep_mask((1000,), 0.1), second)
    torch.manual_seed(4)
    assert not torch.equal(keep_mask((1000,), 0.1), first)  # another seed, another mask
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((1000,), 0.1, generator=g), first)  # an explicit generator is used as given
    assert torch.equal(keep_mask((1000,), 0.1), first)  # ... and the global one is left alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_written_in_xs_dtype_gives_the_bool_masks_dropout_bit_for_bit(dtype):
    """keep_mask(dtype=x.dtype) is the bool mask as 1.0 / 0.0 from the same draws, and dropout built on it gives
    x * (m * (1 - p)^-1) with the bool mask m (the two-step noise it replaced) in value and gradient, bit for bit."""
    x = torch.randn(5, 6, 7).to(dtype).requires_grad_()
    upstream = torch.randn(5, 6, 7).to(dtype)
    for p in (0.1, 0.5, 2.0**-40):
        torch.manual_seed(11)
        mask = keep_mask(x.shape, p)
        torch.manual_seed(11)
        assert torch.equal(keep_mask(x.shape, p, dtype=dtype), mask.to(dtype))
        torch.manual_seed(11)
        reference = x * (mask * torch.ones((), dtype=dtype).div_(1 - p))
        torch.manual_seed(11)
        ours = dropout(x, p)
        assert ours.dtype == dtype and torch.equal(ours, reference)
        assert torch.equal(torch.autograd.grad(ours, x, upstream)[0], torch.autograd.grad(reference, x, upstream)[0])


def test_edge_probabilities_and_modes():
    x = torch.randn(4, 5, requires_grad=True)
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    dropped = dropout(x, 1.0)
    dropped.sum().backward()
    assert not dropped.any() and not x.grad.any()  # p = 1: all dropped, no gradient
    assert keep_mask((1000,), 2.0**-40).all()  # p below 2^-33: K = 2^32, every word kept
    assert not keep_mask((1000,), 1 - 2.0**-40).any()  # K = 0
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        dropout(x, 1.5)
    with pytest.raises(ValueError, match="got -0.1"):
        Dropout(-0.1)
    module = Dropout(0.25)
    assert repr(module) == "Dropout(p=0.25)"
    module.eval()
    assert module(x) is x


def test_the_model_trains_bit_identically_to_nn_dropout_given_the_same_masks(monkeypatch):
    """Draw our masks as nn.Dropout would (bernoulli_ from the same RNG state): the whole model -- embeddings,
    attention probabilities, both residual branches, the classifier -- then gives nn.Dropout's logits and gradients."""
    def model_with(dropout_class):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(**TINY), num_labels=2).train()
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, Dropout):
                    setattr(module, name, dropout_class(child.p))
        return model

    def train_step(model):
        torch.manual_seed(7)
        ids = torch.randint(1, 50, (3, 9))
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        logits = model(ids, mask).logits
        F.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
        return logits, {n: p.grad for n, p in model.named_parameters()}

    ours = model_with(Dropout)
    assert sum(isinstance(m, Dropout) for m in ours.modules()) == 2 + 3 * TINY["num_hidden_layers"]
    monkeypatch.setattr(dropout_module, "keep_mask", bernoulli_masks)
    logits, grads = train_step(ours)
    monkeypatch.setattr(kernels, "ATTENTION_KERNEL", "explicit")  # nn.Dropout on the attention probabilities
    reference_logits, reference_grads = train_step(model_with(nn.Dropout))
    assert torch.equal(logits, reference_logits)
    assert all(torch.equal(grads[n], reference_grads[n]) for n in grads)


def test_cpu_training_takes_the_explicit_attention_path(monkeypatch):
    """SDPA on the CPU has no dropout kernel: in training bert_mini computes softmax(QK^T/sqrt(d)+M) V itself."""
    q = torch.zeros(1, 1, 2, 2)
    assert kernels.attention_kernel(q, dropout_p=0.1) == "explicit"
    assert kernels.attention_kernel(q, dropout_p=0.0) == "sdpa"
    calls = []
    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(k) or 1 / 0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=2).train()
    model(torch.randint(1, 50, (2, 5)))  # would raise ZeroDivisionError through SDPA
    assert calls == []
