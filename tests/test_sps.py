"""SPS: plans, parameter counts, true sharing, the Q/K swap against a hand computation, and gradient accumulation."""
import math

import pytest
import torch

from bert_mini import BertConfig, BertForSequenceClassification, BertModel
from pea_kd.plan_table import describe_plan
from pea_kd.sps import apply_plan, get_encoder, make_plan, variant_of
from pea_kd.students import build_student, count_parameters, effective_layers

F_, T_ = False, True
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24,
            max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(layers=3, seed=0):
    """A random tiny BERT. Q, K and their biases are drawn wider than BERT's N(0, 0.02) so that attention is far
    from uniform and swapping Q and K visibly changes the output (at std 0.02 the scores are all ~0)."""
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**{**TINY, "num_hidden_layers": layers})).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key):
                proj.weight.normal_(0.0, 0.5)
                proj.bias.normal_(0.0, 0.5)
    return model


def inputs(seed=1, batch=2, length=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0  # padding in the second example, so the mask matters
    return ids, mask


def bert_param_count(V, H, I, P=512, T=2, L=3, C=None):
    """Hand arithmetic for BERT's parameter count."""
    embeddings = V * H + P * H + T * H + 2 * H  # word + position + token type tables + LayerNorm (gamma, beta)
    attention = 4 * (H * H + H) + 2 * H  # Q, K, V, output dense (weight + bias) + LayerNorm
    ffn = (H * I + I) + (I * H + H) + 2 * H  # intermediate dense + output dense + LayerNorm
    pooler = H * H + H
    head = 0 if C is None else H * C + C
    return embeddings + L * (attention + ffn) + pooler + head, embeddings, attention + ffn, pooler


# ---------------------------------------------------------------- plans
def test_plans_of_every_variant():
    assert make_plan(3, "original") == [(0, F_), (1, F_), (2, F_)]
    assert make_plan(3, "sps_no_shuffle") == [(0, F_), (1, F_), (2, F_), (0, F_), (1, F_), (2, F_)]
    assert make_plan(3, "sps") == [(0, F_), (1, F_), (2, F_), (0, T_), (1, T_), (2, T_)]
    assert make_plan(1, "SPS") == [(0, F_), (0, T_)]  # names are case-insensitive
    assert make_plan(6, "sps6") == [(i, F_) for i in range(6)] + [(3, T_), (4, T_), (5, T_)]
    assert len(make_plan(6, "sps")) == 12  # the generic stacked rule; 'sps6' is the authors' 9-layer one


def test_plan_errors():
    with pytest.raises(ValueError, match="sps6.*num_layers=6, got 3"):
        make_plan(3, "sps6")
    with pytest.raises(ValueError, match="unknown variant 'mps'.*original, sps_no_shuffle, sps, sps6"):
        make_plan(3, "mps")
    with pytest.raises(ValueError, match="num_layers"):
        make_plan(0, "sps")


def test_describe_plan_table():
    text = describe_plan(make_plan(3, "sps"))
    lines = text.splitlines()
    assert lines[0] == "3 layers of parameters, 6 effective layers"
    assert lines[1].split()[:3] == ["effective", "module", "Q/K"]
    assert lines[2].split() == ["e1", "encoder.layer.0", "normal", "e4"]
    assert lines[5].split() == ["e4", "encoder.layer.0", "swapped", "e1"]
    assert lines[7].split() == ["e6", "encoder.layer.2", "swapped", "e3"]
    original = describe_plan(make_plan(2, "original")).splitlines()
    assert original[2].split() == ["e1", "encoder.layer.0", "normal", "-"]
    six = describe_plan(make_plan(6, "sps6")).splitlines()
    assert six[0] == "6 layers of parameters, 9 effective layers"
    assert six[2].split()[-1] == "-" and six[10].split() == ["e9", "encoder.layer.5", "swapped", "e6"]


def test_apply_plan_on_bare_and_classifier_models():
    bare = tiny_model()
    assert apply_plan(bare, "sps") == bare.encoder.plan == make_plan(3, "sps")
    assert variant_of(bare) == "sps"
    clf = BertForSequenceClassification(BertConfig(**TINY), num_labels=2)
    apply_plan(clf, "sps_no_shuffle")
    assert clf.bert.encoder.plan == make_plan(3, "sps_no_shuffle") and effective_layers(clf) == 6
    assert get_encoder(clf) is clf.bert.encoder
    with pytest.raises(TypeError, match="BertModel"):
        get_encoder(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- parameters
def test_parameter_count_minilm_3_layers():
    original = build_student("minilm-l6", num_layers=3, num_labels=2, variant="original")
    sps = build_student("minilm-l6", num_layers=3, num_labels=2, variant="sps")
    expected, emb, layer, pooler = bert_param_count(V=30522, H=384, I=1536, L=3, C=2)
    assert (emb, layer, pooler) == (11_918_592, 1_774_464, 147_840)
    assert count_parameters(original) == count_parameters(sps) == expected == 17_390_594
    assert count_parameters(sps, include_head=False) == expected - (384 * 2 + 2)
    assert (effective_layers(original), effective_layers(sps)) == (3, 6)


def test_parameter_count_bert_base_shape_matches_method_notes():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=3), num_labels=2)  # bert-base shape, random
    expected, emb, layer, pooler = bert_param_count(V=30522, H=768, I=3072, L=3, C=2)
    assert (emb, layer, pooler) == (23_837_184, 7_087_872, 590_592)  # docs/method.md#students-and-sizes
    without_head = count_parameters(model, include_head=False)
    assert without_head == 45_691_392 and round(without_head / 1e6, 2) == 45.69
    apply_plan(model, "sps")
    assert count_parameters(model) == expected == 45_691_392 + 1_538  # SPS adds nothing


# ---------------------------------------------------------------- sharing
def test_effective_layers_share_the_same_tensors():
    model = tiny_model()
    plan = apply_plan(model, "sps")
    called = []  # which BertLayer object ran at each step, recorded by forward hooks
    for layer in model.encoder.layer:
        layer.register_forward_hook(lambda module, args, out: called.append(module))
    ids, mask = inputs()
    model(ids, mask)
    assert len(called) == 6
    for e in range(3):
        assert called[e] is called[e + 3] is model.encoder.layer[plan[e][0]]
        q_bottom = called[e].attention.self.query.weight
        q_top = called[e + 3].attention.self.query.weight
        assert q_bottom.data_ptr() == q_top.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_model().parameters())


def test_hidden_states_one_per_effective_layer():
    ids, mask = inputs()
    reference = tiny_model()(ids, mask).last_hidden_state
    for variant in ("original", "sps_no_shuffle", "sps"):
        model = tiny_model()
        plan = apply_plan(model, variant)
        out = model(ids, mask, output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == len(plan) + 1 and len(out.attentions) == len(plan)
        torch.testing.assert_close(out.hidden_states[3], reference)  # the bottom half is the Original student
    six = tiny_model(layers=6)
    apply_plan(six, "sps6")
    assert len(six(ids, mask, output_hidden_states=True).hidden_states) == 10


# ---------------------------------------------------------------- the swap, by hand
def layer_params(layer):
    """The weights of one BertLayer as a flat dict of plain tensors (clones: independent of the module)."""
    return {name: p.detach().clone() for name, p in layer.named_parameters()}


def manual_layer(p, x, mask, heads, swap):
    """One post-LN BERT layer written out from raw weights; `swap` exchanges the Q and K projections."""
    def linear(name, h):
        return h @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def layer_norm(name, h):
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-12) * p[f"{name}.weight"] + p[f"{name}.bias"]

    B, T, H = x.shape
    d = H // heads
    q_name, k_name = ("attention.self.key", "attention.self.query") if swap else ("attention.self.query",
                                                                                  "attention.self.key")
    split = lambda h: h.view(B, T, heads, d).transpose(1, 2)  # noqa: E731  (B, A, T, d)
    q, k, v = split(linear(q_name, x)), split(linear(k_name, x)), split(linear("attention.self.value", x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # Q K^T / sqrt(d_k)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    h = layer_norm("attention.output.LayerNorm", x + linear("attention.output.dense", context))
    u = linear("intermediate.dense", h)
    u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))  # exact GELU
    return layer_norm("output.LayerNorm", h + linear("output.dense", u))


def test_swapped_pass_equals_manual_computation():
    model = tiny_model(layers=1)
    model.encoder.plan = [(0, F_), (0, T_)]
    ids, mask = inputs()
    out = model(ids, mask, output_hidden_states=True)
    p = layer_params(model.encoder.layer[0])
    x0 = out.hidden_states[0]
    x1 = manual_layer(p, x0, mask, TINY["num_attention_heads"], swap=False)
    x2 = manual_layer(p, x1, mask, TINY["num_attention_heads"], swap=True)
    torch.testing.assert_close(out.hidden_states[1], x1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.hidden_states[2], x2, rtol=1e-5, atol=1e-5)
    unswapped = manual_layer(p, x1, mask, TINY["num_attention_heads"], swap=False)
    assert (unswapped - x2).abs().max() > 1e-3  # the swap changes the computation


def test_gradients_of_both_uses_accumulate():
    model = tiny_model(layers=1)
    model.encoder.plan = [(0, F_), (0, T_)]
    ids, mask = inputs()
    weights = torch.randn(2, 7, TINY["hidden_size"], generator=torch.Generator().manual_seed(3))
    x0 = model(ids, mask, output_hidden_states=True).hidden_states[0].detach()
    (model(ids, mask).last_hidden_state * weights).sum().backward()
    grad_shared = model.encoder.layer[0].attention.self.query.weight.grad

    # The same network with *two independent copies* of the weights, one per use: the shared gradient is their sum.
    first = {k: v.requires_grad_() for k, v in layer_params(model.encoder.layer[0]).items()}
    second = {k: v.requires_grad_() for k, v in layer_params(model.encoder.layer[0]).items()}
    heads = TINY["num_attention_heads"]
    x2 = manual_layer(second, manual_layer(first, x0, mask, heads, False), mask, heads, True)
    (x2 * weights).sum().backward()
    g1, g2 = first["attention.self.query.weight"].grad, second["attention.self.query.weight"].grad
    torch.testing.assert_close(grad_shared, g1 + g2, rtol=1e-4, atol=1e-6)
    assert (grad_shared - g1).abs().max() > 1e-4 and (grad_shared - g2).abs().max() > 1e-4


def test_identical_query_and_key_make_the_swap_invisible():
    ids, mask = inputs()
    model = tiny_model()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.key.weight.copy_(layer.attention.self.query.weight)
            layer.attention.self.key.bias.copy_(layer.attention.self.query.bias)
    apply_plan(model, "sps")
    swapped = model(ids, mask).last_hidden_state
    apply_plan(model, "sps_no_shuffle")
    torch.testing.assert_close(model(ids, mask).last_hidden_state, swapped, rtol=0, atol=0)

    model = tiny_model()  # distinct Q and K: the swap must matter
    apply_plan(model, "sps")
    swapped = model(ids, mask).last_hidden_state
    apply_plan(model, "sps_no_shuffle")
    assert (model(ids, mask).last_hidden_state - swapped).abs().max() > 1e-3
