"""Tests for pea_kd.losses: every value is checked against an independent reference (numpy loops or hand arithmetic)."""

import math

import numpy as np
import pytest
import torch

from pea_kd import losses as L
from pea_kd.losses import (LossConfig, LossInputs, LossResult, available_losses, build_loss, get_loss,
                           pkd_layer_map, register_loss)


# ---------------------------------------------------------------- independent numpy references (explicit sums)

def np_softmax_row(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def np_ce(z, y):
    """-1/B sum_b log softmax(z_b)[y_b], written with explicit loops."""
    return sum(-math.log(np_softmax_row(list(row))[label]) for row, label in zip(z, y)) / len(z)


def np_kl_sum(z_s, z_t, T):
    """sum_b sum_c p_t log(p_t / p_s) with p = softmax(z / T)."""
    total = 0.0
    for zs_row, zt_row in zip(z_s, z_t):
        p_s = np_softmax_row([v / T for v in zs_row])
        p_t = np_softmax_row([v / T for v in zt_row])
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total


Z_S = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 0.0], [2.0, 1.0, -2.0]])
Z_T = np.array([[3.0, -1.0, 0.5], [0.0, 1.0, 2.0], [1.0, -2.0, 4.0], [-1.0, 0.0, 1.0]])
Y = [1, 2, 0, 0]


def cls_inputs(config, z_s=Z_S, z_t=Z_T, y=Y, dtype=torch.float64, requires_grad=False):
    return LossInputs(student_logits=torch.tensor(z_s, dtype=dtype, requires_grad=requires_grad),
                      labels=torch.tensor(y), teacher_logits=torch.tensor(z_t, dtype=dtype), config=config)


# ---------------------------------------------------------------- CE / MSE

def test_ce_matches_explicit_sum_and_log2():
    out = build_loss("ce")(cls_inputs(LossConfig()))
    assert out.total.item() == pytest.approx(np_ce(Z_S, Y), rel=1e-12)
    assert out.parts == {"ce": pytest.approx(np_ce(Z_S, Y), rel=1e-6)}
    two_equal = LossInputs(torch.zeros(1, 2), labels=torch.tensor([0]))  # softmax = (1/2, 1/2) -> CE = ln 2
    assert L.ce_loss(two_equal).total.item() == pytest.approx(math.log(2), rel=1e-6)


def test_ce_regression_is_mse():
    z = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([0.5, 2.5, 0.0])
    out = L.ce_loss(LossInputs(z, labels=y, config=LossConfig(is_regression=True)))
    assert out.total.item() == pytest.approx((0.25 + 0.25 + 1.0) / 3)  # mean of squared errors = 0.5


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="is_regression=True"):  # one logit but classification
        L.ce_loss(LossInputs(torch.zeros(2, 1), labels=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"\(B, 1\)"):  # regression needs one logit
        L.ce_loss(LossInputs(torch.zeros(2, 3), labels=torch.zeros(2), config=LossConfig(is_regression=True)))
    with pytest.raises(ValueError, match="LossInputs.teacher_logits"):
        L.kd_loss(LossInputs(torch.zeros(2, 3), labels=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="alpha"):
        LossConfig(alpha=1.5)
    with pytest.raises(ValueError, match="kl_reduction"):
        LossConfig(kl_reduction="sum")


# ---------------------------------------------------------------- KD

@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_formula_and_t_squared(T):
    alpha, B = 0.7, len(Z_S)
    out = build_loss("kd")(cls_inputs(LossConfig(alpha=alpha, temperature=T)))
    kl = np_kl_sum(Z_S, Z_T, T) / B  # batchmean
    assert kl > 1e-3  # a non-trivial KL, so a missing T^2 factor would show at T = 4
    assert out.parts["kd"] == pytest.approx(alpha * T ** 2 * kl, rel=1e-6)
    assert out.parts["ce"] == pytest.approx((1 - alpha) * np_ce(Z_S, Y), rel=1e-6)
    assert out.total.item() == pytest.approx(alpha * T ** 2 * kl + (1 - alpha) * np_ce(Z_S, Y), rel=1e-12)


def test_kd_gradient_is_alpha_t_times_prob_difference():
    """d/dz_s [alpha T^2 KL / B] = alpha T (p_s - p_t) / B (Hinton et al.): why the T^2 factor is there."""
    alpha, T, B = 1.0, 4.0, len(Z_S)
    inputs = cls_inputs(LossConfig(alpha=alpha, temperature=T), requires_grad=True)
    build_loss("kd")(inputs).total.backward()
    for b in range(B):
        p_s, p_t = np_softmax_row(list(Z_S[b] / T)), np_softmax_row(list(Z_T[b] / T))
        expected = [alpha * T * (ps - pt) / B for ps, pt in zip(p_s, p_t)]
        assert inputs.student_logits.grad[b].tolist() == pytest.approx(expected, rel=1e-9)


def test_kd_alpha_endpoints():
    T = 3.0
    pure_ce = build_loss("kd")(cls_inputs(LossConfig(alpha=0.0, temperature=T)))
    assert pure_ce.total.item() == pytest.approx(np_ce(Z_S, Y), rel=1e-12)
    assert pure_ce.parts["kd"] == 0.0
    no_labels = cls_inputs(LossConfig(alpha=1.0, temperature=T))
    no_labels.labels = None  # alpha = 1 needs no gold labels
    pure_kd = build_loss("kd")(no_labels)
    assert pure_kd.total.item() == pytest.approx(T ** 2 * np_kl_sum(Z_S, Z_T, T) / len(Z_S), rel=1e-12)
    assert pure_kd.parts["ce"] == 0.0


def test_kl_reduction_mean_is_batchmean_over_classes():
    B, C, T = len(Z_S), Z_S.shape[1], 2.0
    zs, zt = torch.tensor(Z_S), torch.tensor(Z_T)
    batchmean = L.kl_divergence(zs, zt, T, "batchmean").item()
    mean = L.kl_divergence(zs, zt, T, "mean").item()
    assert batchmean == pytest.approx(np_kl_sum(Z_S, Z_T, T) / B, rel=1e-12)
    assert mean == pytest.approx(np_kl_sum(Z_S, Z_T, T) / (B * C), rel=1e-12)
    kd_mean = build_loss("kd")(cls_inputs(LossConfig(alpha=1.0, temperature=T, kl_reduction="mean")))
    assert kd_mean.total.item() == pytest.approx(T ** 2 * mean, rel=1e-12)
    # torch's own KL with the same reductions agrees (teacher as target distribution)
    ref = torch.nn.functional.kl_div(torch.log_softmax(zs / T, -1), torch.softmax(zt / T, -1), reduction="batchmean")
    assert batchmean == pytest.approx(ref.item(), rel=1e-12)


def test_kd_regression_is_mse_analogue_without_temperature():
    z_s, z_t, y = [[1.0], [3.0]], [[2.0], [1.0]], [0.0, 4.0]
    for T in (1.0, 10.0):  # no temperature in the regression analogue
        out = build_loss("kd")(LossInputs(torch.tensor(z_s), labels=torch.tensor(y), teacher_logits=torch.tensor(z_t),
                                          config=LossConfig(alpha=0.7, temperature=T, is_regression=True)))
        # MSE(z_s, z_t) = (1 + 4) / 2 = 2.5 ; MSE(z_s, y) = (1 + 1) / 2 = 1
        assert out.total.item() == pytest.approx(0.7 * 2.5 + 0.3 * 1.0)
        assert out.parts == {"kd": pytest.approx(0.7 * 2.5), "ce": pytest.approx(0.3)}


# ---------------------------------------------------------------- PKD

def pkd_example(beta=100.0):
    """B=1, H=2. Student [CLS] layer 1 = (3,4) -> (.6,.8), layer 2 = (0,2) -> (0,1);
    teacher row 4 = (1,0), row 8 = (0,5) -> (0,1).
    Squared differences: (.4^2 + .8^2) + 0 = 0.8 over M*H = 4 entries -> MSE 0.2, times beta."""
    junk = torch.full((1, 3, 2), 7.0)  # non-[CLS] tokens and unused layers hold junk that must be ignored
    states = [junk.clone() for _ in range(4)]
    states[1][0, 0] = torch.tensor([3.0, 4.0])
    states[2][0, 0] = torch.tensor([0.0, 2.0])
    teacher = torch.full((1, 13, 2), -3.0)
    teacher[0, 4] = torch.tensor([1.0, 0.0])
    teacher[0, 8] = torch.tensor([0.0, 5.0])
    return LossInputs(torch.zeros(1, 2), student_hidden_states=tuple(states), labels=torch.tensor([0]),
                      teacher_cls_hidden=teacher, config=LossConfig(beta=beta, layer_map=[(1, 4), (2, 8)]))


def test_pkd_hand_example():
    out = build_loss("pkd")(pkd_example())
    assert out.total.item() == pytest.approx(100.0 * 0.2, rel=1e-6)
    assert out.parts == {"pkd": pytest.approx(20.0, rel=1e-6)}
    half_beta = build_loss("pkd")(pkd_example(beta=50.0))
    assert half_beta.total.item() == pytest.approx(10.0, rel=1e-6)


def test_pkd_errors():
    inputs = pkd_example()
    inputs.config = LossConfig(layer_map=[])
    with pytest.raises(ValueError, match="layer_map is empty"):
        L.pkd_loss(inputs)
    inputs = pkd_example()
    inputs.teacher_cls_hidden = torch.zeros(1, 13, 3)
    with pytest.raises(ValueError, match="student hidden size 2 != teacher hidden size 3"):
        L.pkd_loss(inputs)
    inputs = pkd_example()
    inputs.config = LossConfig(layer_map=[(4, 1)])  # student has hidden states 0..3
    with pytest.raises(ValueError, match="student index 4 out of range"):
        L.pkd_loss(inputs)


@pytest.mark.parametrize("teacher,student,expected", [
    (12, 1, []), (12, 2, [(1, 6)]), (12, 3, [(1, 4), (2, 8)]), (12, 4, [(1, 3), (2, 6), (3, 9)]),
    (12, 6, [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]), (12, 9, [(3, 4), (6, 8)]),
    (6, 3, [(1, 2), (2, 4)]), (6, 6, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]), (6, 4, [(2, 3)]),
])
def test_pkd_layer_map_table(teacher, student, expected):
    assert pkd_layer_map(teacher, student) == expected


def test_pkd_layer_map_rejects_zero():
    with pytest.raises(ValueError, match="student_effective_layers=0"):
        pkd_layer_map(12, 0)


# ---------------------------------------------------------------- gradcheck (float64)

def test_gradcheck_ce_kd_pkd():
    g = torch.Generator().manual_seed(0)
    B, C, T, H = 3, 4, 5, 6
    y = torch.tensor([0, 3, 1])
    z_t = torch.randn(B, C, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, 7, H, generator=g, dtype=torch.float64)
    cfg = LossConfig(alpha=0.6, temperature=2.0, beta=3.0, layer_map=pkd_layer_map(6, 3))

    def ce(z):
        return L.ce_loss(LossInputs(z, labels=y, config=cfg)).total

    def kd(z):
        return L.kd_loss(LossInputs(z, labels=y, teacher_logits=z_t, config=cfg)).total

    def ce_regression(z):
        return L.ce_loss(LossInputs(z, labels=y.double(), config=LossConfig(is_regression=True))).total

    def pkd(*states):
        return L.pkd_loss(LossInputs(z_t, student_hidden_states=states, teacher_cls_hidden=teacher, config=cfg)).total

    z = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ce, (z,))
    assert torch.autograd.gradcheck(kd, (z,))
    assert torch.autograd.gradcheck(ce_regression, (torch.randn(B, 1, dtype=torch.float64, requires_grad=True),))
    states = tuple(torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(pkd, states)


def test_gradcheck_pkd_uncertainty_and_attn_mse():
    g = torch.Generator().manual_seed(1)
    B, T, H = 2, 4, 3
    module = build_loss("pkd_uncertainty", student_hidden=H, teacher_hidden=H).double()
    teacher = torch.randn(B, 7, H, generator=g, dtype=torch.float64)
    cfg = LossConfig(beta=2.0, layer_map=[(1, 2), (2, 4)])

    def weighted_pkd(s0, s1, s2, log_var):  # gradients w.r.t. the student states and the learned s
        inputs = LossInputs(torch.zeros(B, 2), student_hidden_states=(s0, s1, s2), teacher_cls_hidden=teacher,
                            config=cfg)
        params = {"param_losses.pkd_uncertainty.log_var": log_var}
        return torch.func.functional_call(module, params, (inputs,)).total

    args = [torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    args += [torch.tensor(0.3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(weighted_pkd, tuple(args))

    teacher_att = (torch.softmax(torch.randn(B, 2, T, T, generator=g, dtype=torch.float64), -1),)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])

    def attn(scores):
        inputs = LossInputs(torch.zeros(B, 2), student_attentions=(torch.softmax(scores, -1),),
                            teacher_attentions=teacher_att, attention_mask=mask, config=LossConfig(layer_map=[(1, 1)]))
        return L.attn_mse_loss(inputs).total

    assert torch.autograd.gradcheck(attn, (torch.randn(B, 2, T, T, generator=g, dtype=torch.float64,
                                                       requires_grad=True),))


# ---------------------------------------------------------------- worked examples

def test_pkd_uncertainty_at_zero_equals_pkd_and_learns_the_weight():
    module = build_loss("pkd_uncertainty", student_hidden=2, teacher_hidden=2)
    assert module(pkd_example()).total.item() == pytest.approx(20.0, rel=1e-6)  # s = 0: exp(-0) * 20 + 0
    with torch.no_grad():
        module.param_losses["pkd_uncertainty"].log_var.fill_(math.log(20.0))  # the minimiser s = log L_pt
    assert module(pkd_example()).total.item() == pytest.approx(1.0 + math.log(20.0), rel=1e-6)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    with torch.no_grad():
        module.param_losses["pkd_uncertainty"].log_var.zero_()
    for _ in range(300):  # only s trains: it moves to log L_pt
        opt.zero_grad()
        module(pkd_example()).total.backward()
        opt.step()
    assert float(module.param_losses["pkd_uncertainty"].log_var.detach()) == pytest.approx(math.log(20.0), abs=0.05)
    with pytest.raises(ValueError, match="equal hidden sizes"):
        build_loss("pkd_uncertainty", student_hidden=2, teacher_hidden=3)


def test_attn_mse_hand_example_masks_queries_and_keys():
    # T = 3 with one padded token: only the 2 x 2 block of real (query, key) pairs counts
    t = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]])[None, None]  # (B=1, A=1, T=3, T=3)
    s = torch.tensor([[0.25, 0.75, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])[None, None]
    cfg = LossConfig(layer_map=[(1, 1)])
    mask = torch.tensor([[1, 1, 0]])
    out = build_loss("attn_mse")(LossInputs(torch.zeros(1, 2), student_attentions=(s,), teacher_attentions=(t,),
                                            attention_mask=mask, config=cfg))
    expected = (0.25 ** 2 + 0.25 ** 2 + 0.8 ** 2 + 0.8 ** 2) / 4
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.parts == {"attn_mse": pytest.approx(expected, rel=1e-6)}
    with pytest.raises(ValueError, match="teacher_attentions"):
        L.attn_mse_loss(LossInputs(torch.zeros(1, 2), student_attentions=(s,), attention_mask=mask, config=cfg))
    with pytest.raises(ValueError, match="same shape"):
        L.attn_mse_loss(LossInputs(torch.zeros(1, 2), student_attentions=(s,), teacher_attentions=(t.repeat(1, 2, 1, 1),),
                                   attention_mask=mask, config=cfg))


# ---------------------------------------------------------------- registry

@pytest.fixture
def scratch_registry():
    saved = dict(L.registry._REGISTRY)
    yield
    L.registry._REGISTRY.clear()
    L.registry._REGISTRY.update(saved)


def test_register_new_loss_and_combine_by_name(scratch_registry):
    @register_loss("my_test_loss", requires=("student_logits",))
    def my_test_loss(inputs: LossInputs) -> LossResult:
        """Sum of squared student logits (a test loss)."""
        value = (inputs.student_logits ** 2).sum()
        return LossResult(value, {"my_test_loss": value.detach()})

    assert available_losses()["my_test_loss"] == "Sum of squared student logits (a test loss)."
    loss_fn = build_loss("ce + my_test_loss")
    inputs = cls_inputs(LossConfig())
    out = loss_fn(inputs)
    squares = float((Z_S ** 2).sum())
    assert out.total.item() == pytest.approx(np_ce(Z_S, Y) + squares, rel=1e-12)
    assert out.parts == {"ce": pytest.approx(np_ce(Z_S, Y), rel=1e-6), "my_test_loss": pytest.approx(squares)}
    assert all(isinstance(v, float) for v in out.parts.values())
    inputs.config = LossConfig(weights={"my_test_loss": 0.5})  # L = CE + 0.5 * my
    weighted = loss_fn(inputs)
    assert weighted.total.item() == pytest.approx(np_ce(Z_S, Y) + 0.5 * squares, rel=1e-12)
    assert weighted.parts["my_test_loss"] == pytest.approx(0.5 * squares)  # parts are the weighted terms
    assert loss_fn.requires == {"labels", "student_logits"}
    with pytest.raises(ValueError, match="already registered"):
        register_loss("my_test_loss")(lambda inputs: None)


def test_unknown_and_bad_specs_list_options():
    with pytest.raises(ValueError, match="unknown loss 'nope'") as info:
        get_loss("kd+nope")
    for name in ("ce", "kd", "pkd", "attn_mse", "pkd_uncertainty"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="more than once"):
        build_loss("kd+pkd+kd")
    with pytest.raises(ValueError, match="counts that term twice"):
        build_loss("kd+ce")(cls_inputs(LossConfig()))
    with pytest.raises(ValueError, match="no '\\+'"):
        register_loss("a+b")


def test_needs_params_loss_exposes_trainable_parameters():
    with pytest.raises(ValueError, match="student_hidden=H_s"):
        build_loss("kd+pkd_uncertainty")
    loss_fn = build_loss("kd+pkd_uncertainty", student_hidden=2, teacher_hidden=2)
    params = list(loss_fn.parameters())
    assert [tuple(p.shape) for p in params] == [()]
    assert "log_var" in next(iter(loss_fn.param_losses.values())).state_dict()
    assert build_loss("kd+pkd").requires == {"labels", "teacher_logits", "student_hidden_states", "teacher_cls_hidden"}
    assert list(build_loss("kd+pkd").parameters()) == []


def test_kd_plus_pkd_parts_sum_to_total():
    inputs = pkd_example()
    inputs.teacher_logits = torch.tensor([[2.0, -1.0]])
    inputs.student_logits = torch.tensor([[0.5, 0.0]])
    out = build_loss("kd+pkd")(inputs)
    assert set(out.parts) == {"kd", "ce", "pkd"}
    assert sum(out.parts.values()) == pytest.approx(out.total.item(), rel=1e-6)
    assert out.parts["pkd"] == pytest.approx(20.0, rel=1e-6)


def test_rerunning_a_definition_replaces_it(scratch_registry):
    def define(scale):  # the same function defined twice, like re-running a notebook cell
        @register_loss("rerun_loss")
        def rerun_loss(inputs):
            """Scaled sum of logits."""
            value = scale * inputs.student_logits.sum()
            return LossResult(value, {"rerun_loss": value.detach()})

    define(1.0)
    define(2.0)  # no error: same module and qualified name
    out = build_loss("rerun_loss")(LossInputs(torch.ones(1, 2)))
    assert out.total.item() == 4.0  # the second definition is the one used
    register_loss("rerun_loss", replace=True)(lambda inputs: LossResult(inputs.student_logits.sum(), {}))
    assert build_loss("rerun_loss")(LossInputs(torch.ones(1, 2))).total.item() == 2.0


def test_half_precision_inputs_are_computed_in_float32():
    """Under AMP the student is fp16/bf16: losses upcast (fp32 teacher targets are not rounded) and stay finite."""
    z_s = torch.tensor(Z_S, dtype=torch.bfloat16)  # these values are exact in bfloat16
    z_t = torch.tensor(Z_T, dtype=torch.float32)
    out = build_loss("kd")(LossInputs(z_s, labels=torch.tensor(Y), teacher_logits=z_t,
                                      config=LossConfig(temperature=2.0)))
    assert out.total.dtype == torch.float32
    expected = 0.7 * 4.0 * np_kl_sum(Z_S, Z_T, 2.0) / len(Z_S) + 0.3 * np_ce(Z_S, Y)
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    # float16 attention maps with a padded key are compared in float32
    t = torch.tensor([[0.5, 0.5, 0.0]] * 3, dtype=torch.float16)[None, None]
    s = torch.tensor([[0.25, 0.75, 0.0]] * 3, dtype=torch.float16)[None, None]
    out = L.attn_mse_loss(LossInputs(torch.zeros(1, 2), student_attentions=(s,), teacher_attentions=(t,),
                                     attention_mask=torch.tensor([[1, 1, 0]]), config=LossConfig(layer_map=[(1, 1)])))
    assert out.total.dtype == torch.float32 and out.total.item() == pytest.approx(0.25 ** 2 * 2 * 2 / 4, rel=1e-4)


def test_teacher_layers_read_follows_what_each_component_declares(scratch_registry):
    @register_loss("any_teacher_layer", requires=("teacher_cls_hidden",))
    def any_teacher_layer(inputs: LossInputs) -> LossResult:
        """Reads teacher_cls_hidden wherever it likes (a test loss)."""
        return LossResult(inputs.teacher_cls_hidden.sum(), {})

    layer_map = [(1, 4), (2, 8)]
    assert build_loss("kd").teacher_layers_read(layer_map, 12) == ()
    assert build_loss("kd+pkd").teacher_layers_read(layer_map, 12) == (4, 8)
    assert build_loss("pkd_uncertainty", 8, 8).teacher_layers_read(layer_map, 12) == (4, 8)
    assert build_loss("kd+pkd+any_teacher_layer").teacher_layers_read(layer_map, 12) == tuple(range(13))
    with pytest.raises(ValueError, match="teacher_layers must be 'all' or 'layer_map'"):
        register_loss("bad_layers", requires=("teacher_cls_hidden",), teacher_layers="some")


def test_student_cls_only_follows_what_each_component_declares(scratch_registry):
    """The student computes only its last layer's [CLS] row when no component reads more: none reads the student's
    states (ce, kd), or every one that does reads their [CLS] rows only (pkd); a loss reading every token, or the
    student's attentions, gets the full last layer."""
    @register_loss("every_token", requires=("student_hidden_states",))
    def every_token(inputs: LossInputs) -> LossResult:
        """Reads every token of the student's states (a test loss)."""
        return LossResult(inputs.student_hidden_states[-1].sum(), {})

    assert build_loss("ce").student_cls_only and build_loss("kd").student_cls_only
    assert build_loss("kd+pkd").student_cls_only and build_loss("pkd_uncertainty", 8, 8).student_cls_only
    assert not build_loss("kd+pkd+every_token").student_cls_only
    assert not build_loss("kd+attn_mse").student_cls_only
    with pytest.raises(ValueError, match="student_tokens must be 'all' or 'cls'"):
        register_loss("bad_tokens", requires=("student_hidden_states",), student_tokens="first")


# ---------------------------------------------------------------- beyond the paper: no gold label, every token's state

def test_examples_without_gold_label_get_no_ce_and_no_ce_gradient():
    """On augmented rows (has_gold False) only the teacher is matched: CE = 1/B sum over gold rows (still / B), its
    gradient on the other rows is exactly 0, and the KD term is that of every row."""
    alpha, T, B = 0.7, 2.0, len(Z_S)
    gold = torch.tensor([True, False, True, False])
    y = [1, -1, 0, -1]  # augment.GOLD_MISSING on the rows without a label: never read
    inputs = LossInputs(student_logits=torch.tensor(Z_S, requires_grad=True), labels=torch.tensor(y),
                        teacher_logits=torch.tensor(Z_T), config=LossConfig(alpha=alpha, temperature=T), has_gold=gold)
    out = build_loss("kd")(inputs)
    ce_gold = sum(-math.log(np_softmax_row(list(Z_S[b]))[y[b]]) for b in (0, 2)) / B  # 1/B sum_{b: gold} l_b
    assert out.parts["ce"] == pytest.approx((1 - alpha) * ce_gold, rel=1e-6)
    assert out.parts["kd"] == pytest.approx(alpha * T ** 2 * np_kl_sum(Z_S, Z_T, T) / B, rel=1e-6)
    ce_only = LossInputs(student_logits=torch.tensor(Z_S, requires_grad=True), labels=torch.tensor(y), has_gold=gold)
    L.ce_loss(ce_only).total.backward()
    grad = ce_only.student_logits.grad
    assert grad[1].abs().sum() == 0 and grad[3].abs().sum() == 0 and grad[0].abs().sum() > 0
    p = np_softmax_row(list(Z_S[0]))  # d/dz CE / B = (p - onehot(y)) / B on a gold row
    assert grad[0].tolist() == pytest.approx([(p[c] - (c == 1)) / B for c in range(3)], rel=1e-9)
    none = LossInputs(student_logits=torch.tensor(Z_S), labels=torch.tensor(y), has_gold=torch.zeros(B, dtype=bool))
    assert L.ce_loss(none).total.item() == 0.0  # a batch of augmented rows only: no CE at all
    all_gold = L.ce_loss(LossInputs(torch.tensor(Z_S), labels=torch.tensor(Y), has_gold=torch.ones(B, dtype=bool)))
    assert all_gold.total.item() == pytest.approx(np_ce(Z_S, Y), rel=1e-12)  # every row gold: the plain CE
    reg = LossInputs(torch.tensor([[1.0], [2.0], [0.0]]), labels=torch.tensor([0.5, float("nan"), 1.0]),
                     config=LossConfig(is_regression=True), has_gold=torch.tensor([True, False, True]))
    assert L.ce_loss(reg).total.item() == pytest.approx((0.25 + 1.0) / 3)  # NaN label never read


def np_hidden(student, teacher, mask, pairs):
    """1/(M N_tok H) sum over pairs, real tokens and dims of (h_s - h_t)^2, with explicit loops."""
    total, tokens = 0.0, 0
    for s, t in pairs:
        for b in range(mask.shape[0]):
            for n in range(mask.shape[1]):
                if mask[b, n]:
                    total += sum((float(x) - float(y)) ** 2 for x, y in zip(student[s][b, n], teacher[t][b, n]))
                    tokens += 1
    return total / (tokens * student[0].shape[-1])


@pytest.mark.parametrize("student_layers, teacher_layers, pairs", [
    (6, 6, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]), (3, 6, [(1, 2), (2, 4), (3, 6)]),
    (4, 6, [(2, 3), (4, 6)])])
def test_hidden_loss_matches_loops_over_real_tokens_and_its_layer_map(student_layers, teacher_layers, pairs):
    g = torch.Generator().manual_seed(0)
    B, n, H = 2, 5, 4
    student = tuple(torch.randn(B, n, H, generator=g, dtype=torch.float64) for _ in range(student_layers + 1))
    teacher = tuple(torch.randn(B, n, H, generator=g, dtype=torch.float64) for _ in range(teacher_layers + 1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert L.hidden_layer_map(teacher_layers, student_layers) == pairs
    out = build_loss("hidden")(LossInputs(torch.zeros(B, 2), student_hidden_states=student,
                                          teacher_hidden_states=teacher, attention_mask=mask))
    assert out.total.item() == pytest.approx(np_hidden(student, teacher, mask, pairs), rel=1e-12)
    padded = tuple(h.clone() for h in student)
    for h in padded:
        h[1, 3:] = 1e3  # padding positions: any value, the same loss
    again = build_loss("hidden")(LossInputs(torch.zeros(B, 2), student_hidden_states=padded,
                                            teacher_hidden_states=teacher, attention_mask=mask))
    assert again.total.item() == pytest.approx(out.total.item(), rel=1e-12)


def test_hidden_loss_refuses_other_widths_and_a_cls_only_last_state():
    states = (torch.zeros(1, 3, 4),) * 7
    with pytest.raises(ValueError, match="student width 4 != teacher width 8"):
        L.hidden_loss(LossInputs(torch.zeros(1, 2), student_hidden_states=states,
                                 teacher_hidden_states=(torch.zeros(1, 3, 8),) * 7, attention_mask=torch.ones(1, 3)))
    with pytest.raises(ValueError, match="its \\[CLS\\] row only"):
        L.hidden_loss(LossInputs(torch.zeros(1, 2), student_hidden_states=states[:-1] + (torch.zeros(1, 1, 4),),
                                 teacher_hidden_states=states, attention_mask=torch.ones(1, 3)))
    assert not build_loss("kd+pkd+hidden").student_cls_only  # every token of the last layer is computed
