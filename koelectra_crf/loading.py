"""Loading a model for the commands: a model folder or Hub id (PyTorch) or an ONNX export, with one-line refusals.

Kept apart from evaluation and training so that `koelectra-crf predict` imports neither `datasets` nor the trainer.
"""

from pathlib import Path

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from koelectra_crf import registration  # noqa: F401  (the Auto classes load this model's folders, no remote code)
from koelectra_crf.onnx_model import is_onnx_folder, load_onnx_pipeline
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.usage import UsageError


def default_device() -> str:
    """The GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: str, device: str | None = None, **pipeline_kwargs) -> KoElectraCrfTokenClassificationPipeline:
    """The CRF pipeline of a model folder or Hub id, in evaluation mode, on `device` (default: the GPU when there is
    one); of an ONNX export folder (`onnx_model.export_onnx`), on the CPU with onnxruntime. `pipeline_kwargs` (e.g.
    `respace=True`) become its defaults for every call."""
    if is_onnx_folder(model):
        if device not in (None, "cpu"):
            raise UsageError(f"{model} is an ONNX export: it runs on the CPU (onnxruntime), not on {device}")
        return load_onnx_pipeline(model, **pipeline_kwargs)
    model, tokenizer = load_model(model)
    return KoElectraCrfTokenClassificationPipeline(
        model=model, tokenizer=tokenizer, device=device or default_device(), **pipeline_kwargs
    )


def load_model(model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in evaluation mode) and the tokenizer of a model folder or Hub id; a `UsageError` when `model` is
    neither a model folder nor a model the Hub gives."""
    folder = Path(model)
    instead = "give the --output_dir of a training run (a relative path starts from the current folder) or a Hub id"
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UsageError(f"{model} is a folder without config.json, not a model folder: {instead}")
    try:
        return AutoModelForTokenClassification.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)
    except OSError as error:  # what transformers raises for a model it cannot find or read
        problem = "is not a complete model folder" if folder.is_dir() else "is no folder here, nor a model on the Hub"
        raise UsageError(f"{model} {problem} ({str(error).splitlines()[0]}): {instead}") from error
