"""Parity with the reference implementation (Hugging Face transformers), through committed golden fixtures.

The fixtures were produced by scripts/make_golden_fixtures.py in a scratch environment where transformers is
installed; transformers is never imported here. See tests/fixtures/README.md.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bert_mini import load_pretrained, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURES / "minilm_golden.npz", allow_pickle=False)


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm-l6").eval()


def test_fixture_batch_is_a_real_padded_batch(golden):
    mask = golden["attention_mask"]
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 4 and lengths.min() < mask.shape[1]  # 4 different lengths, real padding
    assert golden["token_type_ids"][:3].max() == 1 and golden["token_type_ids"][3].max() == 0  # 3 pairs, 1 single


@pytest.mark.parametrize("output_attentions", [False, True], ids=["fused-sdpa", "explicit-softmax"])
def test_minilm_matches_reference_to_1e5(golden, minilm, output_attentions):
    batch = {k: torch.from_numpy(golden[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.inference_mode():
        out = minilm(**batch, output_hidden_states=True, output_attentions=output_attentions)
    real = golden["attention_mask"].astype(bool)  # compare real positions; padded rows are not defined outputs
    ours = out.last_hidden_state.numpy()[real]
    ref = golden["last_hidden_state"][real]
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(out.pooler_output.numpy() - golden["pooler_output"]).max() < 1e-5
    cls_ours = torch.stack([h[:, 0] for h in out.hidden_states], dim=1).numpy()  # (B, L+1, H)
    assert np.abs(cls_ours - golden["cls_hidden_states"]).max() < 1e-5


def test_parity_test_would_catch_a_wrong_model(golden, minilm):
    """Guard against a vacuous comparison: a slightly perturbed model must fail the 1e-5 bar."""
    batch = {k: torch.from_numpy(golden[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    ln = minilm.encoder.layer[3].output.LayerNorm
    original = ln.weight.detach().clone()
    try:
        with torch.no_grad():
            ln.weight.mul_(1.001)
            out = minilm(**batch)
    finally:
        with torch.no_grad():
            ln.weight.copy_(original)
    assert np.abs(out.pooler_output.numpy() - golden["pooler_output"]).max() > 1e-5


def test_tokenizer_matches_reference_on_real_glue_text():
    golden = json.loads((FIXTURES / "tokenizer_golden.json").read_text(encoding="utf-8"))
    entries = golden["entries"]
    assert len(entries) >= 300 and sum(e["truncated"] for e in entries) >= 20
    tok = load_tokenizer("minilm-l6")
    mismatches = []
    for e in entries:
        enc = tok.encode(e["text_a"], e["text_b"], max_length=e["max_length"])
        if enc.input_ids != e["input_ids"] or enc.token_type_ids != e["token_type_ids"]:
            mismatches.append(e["id"])
    assert not mismatches, f"{len(mismatches)} of {len(entries)} differ, e.g. {mismatches[:5]}"
    unk = sum(i == tok.unk_token_id for e in entries for i in e["input_ids"])
    assert unk / sum(len(e["input_ids"]) for e in entries) < 0.01  # the reference itself is not all-[UNK]
