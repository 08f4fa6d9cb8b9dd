"""koelectra-crf: Korean named-entity recognition with an encoder + BiLSTM + CRF head.

`import koelectra_crf` changes nothing and imports neither torch nor transformers (so that the `koelectra-crf`
command starts at once). The first name taken from the package (`from koelectra_crf import ...` or
`koelectra_crf.NAME`) imports the model and makes two additions to transformers, both leaving every other model as it
was (`registration`): the Auto classes load a saved folder of this model in the process without
`trust_remote_code`, and `pipeline("token-classification", model=...)` builds the CRF pipeline for a model object of
this kind.

Every folder the model's `save_pretrained` writes (directly, through `push_to_hub`, the pipeline's `save_pretrained`,
or training) carries the code and names the pipeline in its config: `pipeline("token-classification", model=folder,
trust_remote_code=True)` works in any process, without this package. There, for a model object, pass
`pipeline_class=` or build the pipeline directly: `KoElectraCrfTokenClassificationPipeline(model=model,
tokenizer=tokenizer)`.
"""

from importlib import import_module

_PUBLIC_NAMES = {
    "KLUE_LABELS": "configuration_koelectra_crf",
    "KoElectraCrfConfig": "configuration_koelectra_crf",
    "KoElectraCrfForTokenClassification": "modeling_koelectra_crf",
    "KoElectraCrfOutput": "modeling_koelectra_crf",
    "KoElectraCrfTokenClassificationPipeline": "pipeline_koelectra_crf",
    "LinearChainCRF": "crf",
    "TokenClassificationDispatch": "registration",
    "bio_constraints": "crf",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_PUBLIC_NAMES)


def __getattr__(name: str) -> object:
    """A public name, imported on first use (PEP 562) after the registration with transformers. Any other name is
    not an attribute, so that `from koelectra_crf import SUBMODULE` imports the submodule as usual."""
    if name not in _PUBLIC_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import_module(".registration", __name__)
    value = getattr(import_module(f".{_PUBLIC_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
