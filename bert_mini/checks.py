"""The model's argument checks: a config's values, an encoder plan, a batch of token ids, a checkpoint's shapes.

Each refuses bad input with a one-line error naming the argument and what was expected, before any computation.
bert_mini.config, modeling and loading call them by one line each; skip on a first reading.
"""
from __future__ import annotations

SUPPORTED_ACTIVATIONS = {"gelu"}


def check_config(config) -> None:
    """Refuse a BertConfig whose H is not divisible by A, whose sizes are not positive, or whose activation is not
    the exact GELU."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"BertConfig: hidden_size={config.hidden_size} is not divisible by "
                         f"num_attention_heads={config.num_attention_heads}")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
        if int(getattr(config, name)) <= 0:
            raise ValueError(f"BertConfig: {name} must be a positive integer, got {getattr(config, name)!r}")
    if config.hidden_act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"BertConfig: hidden_act={config.hidden_act!r} is not supported (expected 'gelu')")


def checked_plan(steps, num_layers: int) -> list[tuple[int, bool]]:
    """`steps` as a list of (int layer index, bool swap_qk), refused when empty or naming a layer that does not
    exist among the encoder's `num_layers`."""
    steps = [(int(i), bool(swap)) for i, swap in steps]
    if not steps:
        raise ValueError("encoder plan must have at least one step")
    for i, _ in steps:
        if not 0 <= i < num_layers:
            raise ValueError(f"encoder plan refers to layer {i}, but the encoder has {num_layers} layers")
    return steps


def check_input_ids(input_ids, max_position_embeddings: int) -> None:
    """Refuse input_ids that are not (batch, length) or longer than the position embeddings."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_position_embeddings:
        raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                         f"{max_position_embeddings}")


def checked_layer_count(num_hidden_layers: int, available: int, model_dir) -> int:
    """`num_hidden_layers`, refused unless 1 <= it <= the `available` layers of the checkpoint in `model_dir`."""
    if not 1 <= num_hidden_layers <= available:
        raise ValueError(f"num_hidden_layers={num_hidden_layers}: {model_dir} has {available} layers")
    return num_hidden_layers


def check_shape(weights_path, key: str, tensor, expected) -> None:
    """Refuse a checkpoint tensor whose shape differs from the one the model built from config.json has."""
    if tuple(tensor.shape) != tuple(expected.shape):
        raise ValueError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, "
                         f"config.json implies {tuple(expected.shape)}")
