"""INSTRUCTOR ONLY. The answers of the auto-checked exercises (the short ones at the end of the notebooks).

`EXERCISES` says, per exercise, what each field asks for (its kind, the decimals, the help line a student sees) and
holds the model answer; `build()` turns it into the digests of pea_kd/assignments/exercises.json (written by
`python -m instructor.make_fixtures`). Numbers marked "computed" are computed here with the project's code, so a
change of the code that changes an answer changes the file and fails `make_fixtures --check`.
Written answers of these and the other exercises: instructor/exercises.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bert_mini import BertConfig
from pea_kd.assignments.exercises import candidate_digests, digest, format_float, function_values
from pea_kd.losses import LossResult
from pea_kd.losses.hidden import hidden_layer_map
from pea_kd.metrics import compute_metrics
from pea_kd.ptp import PTP_CLASSES, build_ptp_labels


# ---------------------------------------------------------------- answers that are functions

def pre_ln_layer(layer, x):
    """01.3: x + Attn(LN_a(x)), then y + FFN(LN_f(y)); LN_a = attention.output.LayerNorm, LN_f = output.LayerNorm."""
    sa, so, ffn = layer.attention.self, layer.attention.output, layer.output
    n, H = x.shape
    h, d = sa.num_heads, sa.head_size
    split = lambda z: z.view(n, h, d).transpose(0, 1)  # noqa: E731 - (n, H) -> (h, n, d)
    x_norm = so.LayerNorm(x)
    q, k, v = (split(lin(x_norm)) for lin in (sa.query, sa.key, sa.value))
    heads = ((q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1) @ v).transpose(0, 1).reshape(n, H)
    y = x + so.dense(heads)
    return y + ffn.dense(layer.intermediate(ffn.LayerNorm(y)))


def post_ln_layer(layer, x):
    """The usual (post-LN) BERT layer: the answer a student gives by not changing layer_by_hand."""
    return layer(x[None], torch.zeros(1, 1, 1, 1))[0][0]


def last_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """04.3: PKD-Last: student k with teacher L_t - L_s + k, k = 1 .. L_s - 1."""
    return [(k, teacher_layers - student_layers + k) for k in range(1, student_layers)]


def skip_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """PKD-Skip (the wrong answer to 04.3): student k with teacher k * L_t / L_s."""
    return [(k, k * teacher_layers // student_layers) for k in range(1, student_layers)]


def cos_cls(inputs) -> LossResult:
    """04.4: 1 - cos(h^s_{L_s}[CLS], h^t_{L_t}[CLS]), averaged over the batch."""
    loss = 1 - F.cosine_similarity(inputs.student_hidden_states[-1][:, 0], inputs.teacher_cls_hidden[:, -1].detach(),
                                   dim=-1).mean()
    return LossResult(loss, {"cos_cls": loss})


# ---------------------------------------------------------------- computed answers

def bert_base_student_parameters() -> int:
    """01.5: parameters of a 3-layer bert-base BertModel (embeddings, layers, pooler; no classifier head)."""
    from bert_mini import BertModel
    with torch.device("meta"):
        return sum(p.numel() for p in BertModel(BertConfig(num_hidden_layers=3)).parameters())


def equal_size_hidden() -> int:
    """01.5: the H whose 12-layer BERT (I = 4H) has the parameter count closest to the 3-layer bert-base student."""
    from bert_mini import BertModel
    target = bert_base_student_parameters()

    def count(h):
        with torch.device("meta"):
            model = BertModel(BertConfig(hidden_size=h, intermediate_size=4 * h, num_attention_heads=1))
        return sum(p.numel() for p in model.parameters())
    low, high = 64, 1024  # count(h) grows with h: bisect for count(low) <= target < count(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count(mid) <= target else (low, mid)
    return min((low, high), key=lambda h: abs(count(h) - target))


def constant_paraphrase_metrics() -> dict:
    """02.5: MRPC dev, 279 positives of 408, always predicting 1."""
    labels = np.r_[np.ones(279, dtype=np.int64), np.zeros(129, dtype=np.int64)]
    mrpc = compute_metrics("mrpc", np.ones(408, dtype=np.int64), labels)
    return {"accuracy": 100 * mrpc["acc"], "f1": 100 * mrpc["f1"],
            "mcc": compute_metrics("cola", np.ones(408, dtype=np.int64), labels)["mcc"]}


def ptp_nine_correct() -> dict:
    """06.1: nine correct examples with distinct confidences."""
    z = torch.tensor([[0.1 * (k + 1), 0.0] for k in range(9)])
    res = build_ptp_labels(z, torch.zeros(9, dtype=torch.long))
    median_class = int(res.labels[res.confidence == res.t1][0])
    return {"median_example_class": median_class, "histogram": [res.histogram[c] for c in PTP_CLASSES]}


NO_MISTAKES_LOGITS = [[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5], [1.5, 0.0], [0.0, 4.0]]


def ptp_no_mistakes() -> dict:
    """06.2: the six logits the notebook gives, with gold labels equal to the teacher's argmax."""
    z = torch.tensor(NO_MISTAKES_LOGITS)
    res = build_ptp_labels(z, z.argmax(1))
    return {"t2": res.t2, "histogram": [res.histogram[c] for c in PTP_CLASSES]}


BALANCE_BATCH = {  # a3.5: the batch the notebook's check cell shows (float64 logits, gold labels)
    "z_s": [[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.3, 0.1, 0.9], [1.5, 0.0, -0.5]],
    "z_t": [[3.0, -1.0, 0.5], [-0.5, 2.5, -2.0], [0.0, -1.5, 2.0], [2.0, 1.0, -3.0]],
    "y": [0, 1, 2, 1],
}


def soft_to_hard_gradient(temperature: float, factor: float, alpha: float = 0.7) -> float:
    """a3.5: ||d(alpha * factor * KL(softmax(z_t/T) || softmax(z_s/T)))/dz_s|| / ||d((1 - alpha) CE(z_s, y))/dz_s||
    on BALANCE_BATCH (KL with "batchmean", CE averaged over the batch)."""
    z_t, y = torch.tensor(BALANCE_BATCH["z_t"], dtype=torch.float64), torch.tensor(BALANCE_BATCH["y"])
    z_s = torch.tensor(BALANCE_BATCH["z_s"], dtype=torch.float64, requires_grad=True)
    kl = F.kl_div(F.log_softmax(z_s / temperature, -1), F.softmax(z_t / temperature, -1), reduction="batchmean")
    (soft,) = torch.autograd.grad(alpha * factor * kl, z_s)
    (hard,) = torch.autograd.grad((1 - alpha) * F.cross_entropy(z_s, y), z_s)
    return (soft.norm() / hard.norm()).item()


def replacement_counts(words: int = 10, rate: float = 0.4, variants: int = 8) -> dict:
    """09.2: each of `words` whole words replaced with probability `rate` on its own (pea_kd.augment)."""
    unchanged = (1 - rate) ** words
    return {"mean_replaced": words * rate, "p_unchanged": unchanged, "identical_of_8": variants * unchanged}


def hidden_cache_gb(examples: int = 67_349, tokens: int = 64, layers: int = 6, width: int = 384) -> float:
    """09.3: examples x tokens x layers x H x 2 bytes (float16), in 10^9 bytes."""
    return examples * tokens * layers * width * 2 / 1e9


# ---------------------------------------------------------------- the exercises

def _f(help_text, answer, decimals, **extra):
    return {"kind": "float", "decimals": decimals, "help": help_text, "answer": answer, **extra}


def _field(kind, help_text, answer, **extra):
    return {"kind": kind, "help": help_text, "answer": answer, **extra}


def exercises() -> dict:
    """{key: {"title", "notebook", "fields": {name: spec with "answer" (and "hints": {wrong value: hint})}}}."""
    mrpc, nine, none_wrong = constant_paraphrase_metrics(), ptp_nine_correct(), ptp_no_mistakes()
    counts = replacement_counts()
    balance = {"start": soft_to_hard_gradient(10.0, 100.0), "end": soft_to_hard_gradient(1.0, 1.0),
               "end_with_t0_squared": soft_to_hard_gradient(1.0, 100.0)}
    return {
        "01.3": {"title": "Pre-LN", "notebook": "01_bert_from_scratch.ipynb", "fields": {
            "pre_ln_layer": _field("function", "a function (layer, x) -> x' for x of shape (n, H)", pre_ln_layer,
                                   hints_fn={post_ln_layer: "that is the post-LN layer of "
                                                             "section 3; normalise *before* each sub-layer"})}},
        "01.4": {"title": "Token types", "notebook": "01_bert_from_scratch.ipynb", "fields": {
            "differing_terms": _field("names", "the embedding terms (one or more of 'word', 'position', "
                                      "'token_type') that differ for the word 'cat'", ("position", "token_type"),
                                      hints={("token_type",): "count the positions of 'cat' in the two encodings"})}},
        "01.5": {"title": "Parameters", "notebook": "01_bert_from_scratch.ipynb", "fields": {
            "hidden_size": _field("int", "the whole number H (any, not only a multiple of 64) whose 12-layer BERT "
                                  "(I = 4H) has the parameter count closest to the 3-layer bert-base student's",
                                  equal_size_hidden())}},
        "02.5": {"title": "Baselines", "notebook": "02_tokenization_and_glue.ipynb", "fields": {
            "accuracy": _f("accuracy in %, 1 decimal", mrpc["accuracy"], 1, percent=True),
            "f1": _f("F1 in %, 1 decimal", mrpc["f1"], 1, percent=True),
            "mcc": _f("Matthews correlation, 2 decimals", mrpc["mcc"], 2),
            "nothing_learned": _field("name", "the metric that shows it ('accuracy', 'f1' or 'mcc')", "mcc")}},
        "04.2": {"title": "mean vs batchmean", "notebook": "04_kd_losses.ipynb", "fields": {
            "alpha": _f("alpha under batchmean, 4 decimals", 0.7 / (0.7 + 3 * 0.3), 4,
                        hints={0.7 / 3: "alpha also scales the CE term, which 'mean' does not divide by C",
                               0.7: "the same alpha gives a different loss under the two reductions"})}},
        "04.3": {"title": "PKD-Skip vs PKD-Last", "notebook": "04_kd_losses.ipynb", "fields": {
            "last_map": _field("function", "a function last_map(L_t, L_s) -> [(student k, teacher layer), ...]",
                               last_map, hints_fn={skip_map: "that is PKD-Skip"})}},
        "04.4": {"title": "Your own loss", "notebook": "04_kd_losses.ipynb", "fields": {
            "requires": _field("names", "the LossInputs fields the loss reads", ("student_hidden_states",
                                                                                 "teacher_cls_hidden")),
            "cos_cls": _field("function", "a loss function (inputs: LossInputs) -> LossResult", cos_cls)}},
        "05.2": {"title": "Which half to swap?", "notebook": "05_sps.ipynb", "fields": {
            "equals_sps": _field("name", "'bottom' or 'everything'", "bottom")}},
        "05.5": {"title": "Gradient accumulation", "notebook": "05_sps.ipynb", "fields": {
            "unrolled_layers": _field("int_set", "the indices (0-5) of the unrolled layers", (1, 4),
                                      hints={(1,): "W_v is used twice, also in the second pass",
                                             (1, 2): "the second pass starts at unrolled layer 3"})}},
        "06.1": {"title": "Odd and even", "notebook": "06_ptp.ipynb", "fields": {
            "median_example_class": _field("int", "the PTP class (0-3) of the median example",
                                           nine["median_example_class"]),
            "histogram": _field("int_list", "the four class counts, in the order of PTP_CLASSES", nine["histogram"])}},
        "06.2": {"title": "No mistakes", "notebook": "06_ptp.ipynb", "fields": {
            "t2": _f("t2, 2 decimals", none_wrong["t2"], 2),
            "histogram": _field("int_list", "the four class counts, in the order of PTP_CLASSES",
                                none_wrong["histogram"])}},
        "07.6": {"title": "Another task", "notebook": "07_putting_it_together.ipynb", "fields": {
            "primary_metric": _field("name", "the key compute_metrics returns for it (as in the results table)",
                                     "acc", hints={"accuracy": "use the metric's key, as compute_metrics names it"})}},
        "09.1": {"title": "Another layer map", "notebook": "09_beyond_the_paper.ipynb", "fields": {
            "pairs": _field("int_list", "the pairs as one flat list [s1, t1, s2, t2, ...], in order of s",
                            [v for pair in hidden_layer_map(6, 8) for v in pair],
                            hints={(3, 2, 6, 4, 9, 6): "that is the map of 9 effective layers; the student has 8",
                                   (8, 6): "another s also sits at a whole teacher layer: try every s from 1 to 8",
                                   (1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6): "that is the map of 6 effective layers; "
                                                                        "the student has 8"})}},
        "09.2": {"title": "How many words change", "notebook": "09_beyond_the_paper.ipynb", "fields": {
            "mean_replaced": _f("the mean number of replaced words, 1 decimal", counts["mean_replaced"], 1),
            "p_unchanged": _f("P(no word replaced), 4 decimals", counts["p_unchanged"], 4,
                              hints={0.4 ** 10: "that is P(every word replaced); no word replaced is (1 - r)^10"}),
            "identical_of_8": _f("the expected number of the 8 variants identical to the original, 2 decimals",
                                 counts["identical_of_8"], 2)}},
        "09.3": {"title": "The cost of a cache, for SST-2", "notebook": "09_beyond_the_paper.ipynb", "fields": {
            "gb": _f("GB (10^9 bytes), 1 decimal", hidden_cache_gb(), 1,
                     hints={hidden_cache_gb() * 2: "float16 is 2 bytes a number, not 4",
                            hidden_cache_gb() * 1e9 / 2 ** 30: "GB here is 10^9 bytes, not 2^30"})}},
        "a1.1": {"title": "Different head counts", "notebook": "assignments/a1_attention_kd.ipynb", "fields": {
            "averaged_kl": _field("name", "'at most', 'at least' or 'either' (relative to the average of the "
                                  "per-head KLs)", "at most")}},
        "a3.3": {"title": "Tying N_anneal to the run", "notebook": "assignments/a3_temperature_annealing.ipynb",
                 "fields": {
            "steps_per_epoch": _field("int", "optimiser steps in one epoch", math.ceil(3668 / 32),
                                      hints={3668 // 32: "the last, smaller batch is a step too"}),
            "total_steps": _field("int", "steps in 6 epochs", 6 * math.ceil(3668 / 32)),
            "anneal_steps": _field("int", "N_anneal for annealing over the first half", 3 * math.ceil(3668 / 32))}},
        "a3.5": {"title": "T_k^2 or T_0^2?", "notebook": "assignments/a3_temperature_annealing.ipynb", "fields": {
            "start": _f("soft/hard gradient norm at T = T_0 = 10 with the factor T_0^2 = 100, 2 decimals",
                        balance["start"], 2,
                        hints={balance["start"] / 100: "the soft term is alpha T^2 KL: include T^2 = 100",
                               balance["start"] * 0.3 / 0.7: "weight the soft term by alpha and the CE term by "
                                                             "1 - alpha"}),
            "end": _f("soft/hard gradient norm at T = T_k = 1 with the factor T_k^2 = 1, 2 decimals", balance["end"], 2,
                      hints={balance["end_with_t0_squared"]: "at the end of annealing the factor is T_k^2 = 1, "
                                                             "not T_0^2"}),
            "end_with_t0_squared": _f("soft/hard gradient norm at T = T_k = 1 with the factor T_0^2 = 100 (the "
                                      "mistake), 1 decimal", balance["end_with_t0_squared"], 1,
                                      hints={balance["end"]: "this one keeps the factor T_0^2 = 100 at T_k = 1"})}},
    }


# A float answer must lie at least this far (in units of its last decimal) from a rounding boundary, so that the
# digest of its rounding is the same on every CPU. Measured: the float32 answers of 01.3 moved by 0.001 units between
# AVX2 and ATEN_CPU_CAPABILITY=default kernels; the float64 ones not at all. (A student's value is graded with a
# shift of 0.49 units either way, so students are safe whatever this margin; it keeps exercises.json CPU-independent.)
BOUNDARY_MARGIN = 0.01


def _canonical_digest(key, field, spec, value) -> str:
    """The digest of the answer itself (a float rounded once, not the checker's tolerant candidates). ValueError for
    a float within BOUNDARY_MARGIN of a rounding boundary."""
    if spec["kind"] == "float":
        units = float(value) * 10.0 ** spec["decimals"]
        if abs(units - math.floor(units) - 0.5) < BOUNDARY_MARGIN:
            raise ValueError(f"{key} {field}: {value!r} lies within {BOUNDARY_MARGIN} of a unit of its last decimal "
                             f"from a rounding boundary ({spec['decimals']} decimals); another CPU's last bits could "
                             "round it the other way: ask for another number of decimals or change the case")
        return digest(key, field, format_float(value, spec["decimals"]))
    [answer_digest] = candidate_digests(key, field, value, spec)  # one canonical text for every other kind
    return answer_digest


def _function_cases(key: str, field: str, fn, like: list[dict] = None) -> list[dict]:
    """Specs of the values `fn` returns on the fixed cases: their kind, decimals and digest. Floats get 5 significant
    digits, or the decimals of the matching case in `like` (the correct answer's cases, for a wrong variant)."""
    cases = []
    for index, (what, value) in enumerate(function_values(key, field, fn)):
        if like is not None:
            case = {k: v for k, v in like[index].items() if k != "digest"}
        elif isinstance(value, float):
            case = {"kind": "float", "decimals": 4 - math.floor(math.log10(abs(value)))}
        else:
            case = {"kind": "int_list"}
        case["digest"] = _canonical_digest(key, f"{field}/{what}", case, value)
        cases.append(case)
    return cases


def build() -> dict:
    """The content of exercises.json: per field its kind, help, decimals and digests; no answer in plain text."""
    out = {}
    for key, exercise in exercises().items():
        fields = {}
        for field, spec in exercise["fields"].items():
            stored = {"kind": spec["kind"], "help": spec["help"]}
            if spec["kind"] == "function":
                stored["cases"] = _function_cases(key, field, spec["answer"])
                wrong = {}
                for fn, hint in spec.get("hints_fn", {}).items():
                    wrong[hint] = [c["digest"] for c in _function_cases(key, field, fn, like=stored["cases"])]
                if wrong:
                    stored["hints"] = wrong
            else:
                if spec["kind"] == "float":
                    stored["decimals"] = spec["decimals"]
                    stored["percent"] = spec.get("percent", False)
                stored["digest"] = _canonical_digest(key, field, stored, spec["answer"])
                hints = {_canonical_digest(key, field, stored, v): h for v, h in spec.get("hints", {}).items()}
                if hints:
                    stored["hints"] = hints
            fields[field] = stored
        out[key] = {"title": exercise["title"], "notebook": exercise["notebook"], "fields": fields}
    return out


def answers() -> dict:
    """{key: {field: model answer}}: what a student would pass to check_exercise."""
    return {key: {field: spec["answer"] for field, spec in ex["fields"].items()} for key, ex in exercises().items()}
