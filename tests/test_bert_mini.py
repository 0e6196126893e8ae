"""bert_mini on tiny random configs: shapes, padding invariance, gradients, plans, config round-trip."""
import json

import pytest
import torch

from bert_mini import BertConfig, BertForSequenceClassification, BertModel

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return BertModel(BertConfig(**{**TINY, **overrides})).eval()


def random_batch(batch=3, length=9, vocab=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return ids, types


def test_output_shapes_and_optional_outputs():
    model = tiny_model()
    ids, types = random_batch()
    out = model(ids, token_type_ids=types)
    assert out.last_hidden_state.shape == (3, 9, 32)
    assert out.pooler_output.shape == (3, 32)
    assert out.hidden_states is None and out.attentions is None
    out = model(ids, token_type_ids=types, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (3, 4, 9, 9)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(3, 4, 9))
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_fused_and_explicit_attention_paths_agree():
    model = tiny_model()
    ids, types = random_batch()
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    fused = model(ids, mask, types).last_hidden_state
    explicit = model(ids, mask, types, output_attentions=True).last_hidden_state
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_attentions", [False, True])
def test_padding_does_not_change_real_positions(with_attentions):
    model = tiny_model()
    ids, types = random_batch(batch=1, length=7)
    short = model(ids, torch.ones_like(ids), types, output_attentions=with_attentions)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded_types = torch.cat([types, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], dim=1)
    long = model(padded_ids, mask, padded_types, output_attentions=with_attentions)
    torch.testing.assert_close(long.last_hidden_state[:, :7], short.last_hidden_state, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(long.pooler_output, short.pooler_output, atol=1e-6, rtol=1e-5)
    if with_attentions:  # padded keys get exactly zero probability
        assert long.attentions[0][..., 7:].abs().max() == 0


def test_additive_mask_is_skipped_only_when_nothing_is_padded():
    from bert_mini.modeling import extended_attention_mask

    assert extended_attention_mask(torch.ones(2, 5, dtype=torch.long), torch.float32) is None
    mask = extended_attention_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.float32)
    assert mask.shape == (2, 1, 1, 3)
    assert mask.flatten().tolist() == [0.0, 0.0, torch.finfo(torch.float32).min, 0.0, 0.0, 0.0]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=3).train()
    ids, types = random_batch()
    logits = model(ids, token_type_ids=types).logits
    assert logits.shape == (3, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        # Token-type row 1 is used; the padding row of the word embeddings never is, but the rest of the table is.
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize("plan", [None, [(0, False), (1, False), (0, True), (1, True)]], ids=["plain", "sps"])
@pytest.mark.parametrize("with_attentions", [False, True])  # the explicit kernel, and SDPA
def test_cls_only_computes_the_same_cls_row_logits_and_gradients(plan, with_attentions):
    """cls_only=True computes only the [CLS] row of the last step: the rows it skips feed nothing the classifier reads,
    so logits, every earlier hidden state and every parameter's gradient are those of the full pass."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=3).eval()
    if plan is not None:
        model.bert.encoder.plan = plan
    ids, types = random_batch()
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # one padded example: [CLS] must still ignore its padded keys
    runs = {}
    for cls_only in (False, True):
        model.zero_grad()
        out = model(ids, mask, types, output_hidden_states=True, output_attentions=with_attentions, cls_only=cls_only)
        torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
        runs[cls_only] = out, {n: p.grad.clone() for n, p in model.named_parameters()}
    (full, full_grads), (cls, cls_grads) = runs[False], runs[True]
    steps = len(model.bert.encoder.plan)
    assert cls.last_hidden_state.shape == (3, 1, 32) and len(cls.hidden_states) == steps + 1
    assert full.last_hidden_state.shape == (3, 9, 32)
    for k in range(steps):  # every state before the last step is computed in full, identically
        assert torch.equal(cls.hidden_states[k], full.hidden_states[k])
    torch.testing.assert_close(cls.last_hidden_state, full.last_hidden_state[:, :1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls.logits, full.logits, atol=1e-6, rtol=1e-5)
    if with_attentions:
        torch.testing.assert_close(cls.attentions[-1], full.attentions[-1][:, :, :1], atol=1e-6, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(cls_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert any(g.abs().max() > 0 for n, g in cls_grads.items() if "layer.1.attention.self.query" in n)


def test_regression_head_has_one_output():
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=1)
    ids, types = random_batch()
    assert model(ids, token_type_ids=types).logits.shape == (3, 1)


def test_parameter_names_match_hf_checkpoint_layout():
    names = set(BertForSequenceClassification(BertConfig(**TINY), 2).state_dict())
    for expected in ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                     "bert.encoder.layer.1.attention.self.query.weight", "bert.encoder.layer.0.attention.output.dense.bias",
                     "bert.encoder.layer.0.intermediate.dense.weight", "bert.encoder.layer.0.output.LayerNorm.bias",
                     "bert.pooler.dense.weight", "classifier.weight"]:
        assert expected in names


def test_plan_runs_layers_in_order_and_can_swap_qk():
    model = tiny_model()
    ids, types = random_batch()
    base = model(ids, token_type_ids=types, output_hidden_states=True)
    model.encoder.plan = [(0, False), (1, False), (0, True), (1, True)]
    shared = model(ids, token_type_ids=types, output_hidden_states=True)
    assert len(shared.hidden_states) == 5
    torch.testing.assert_close(shared.hidden_states[2], base.hidden_states[2])  # first two steps unchanged
    # Step 3 is layer 0 with Q and K exchanged: compare with a copy whose projections were physically swapped.
    swapped = tiny_model()
    attn = swapped.encoder.layer[0].attention.self
    attn.query, attn.key = attn.key, attn.query
    x = shared.hidden_states[2]
    mask = torch.zeros(3, 1, 1, 9)
    expected, _ = swapped.encoder.layer[0](x, mask)
    torch.testing.assert_close(shared.hidden_states[3], expected)
    assert not torch.allclose(shared.hidden_states[3], model.encoder.layer[0](x, mask)[0])


def test_plan_rejects_unknown_layers():
    model = tiny_model()
    with pytest.raises(ValueError, match="layer 2"):
        model.encoder.plan = [(0, False), (2, False)]
    with pytest.raises(ValueError, match="at least one"):
        model.encoder.plan = []


def test_config_round_trip_and_refusals(tmp_path):
    config = BertConfig(**TINY)
    config.to_json(tmp_path / "config.json")
    assert BertConfig.from_json(tmp_path / "config.json") == config
    hf = {**TINY, "architectures": ["BertModel"], "transformers_version": "4.8.2", "position_embedding_type": "absolute"}
    (tmp_path / "hf.json").write_text(json.dumps(hf))
    assert BertConfig.from_json(tmp_path / "hf.json").hidden_size == 32
    (tmp_path / "rel.json").write_text(json.dumps({**hf, "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match=r"rel\.json: position_embedding_type='relative_key' is not implemented"):
        BertConfig.from_json(tmp_path / "rel.json")
    (tmp_path / "odd.json").write_text(json.dumps({**TINY, "num_attention_heads": 5}))
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig.from_json(tmp_path / "odd.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        BertConfig.from_json(tmp_path / "bad.json")


def test_too_long_input_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=40"):
        model(torch.ones(1, 41, dtype=torch.long))
