"""koelectra-crf: Korean named-entity recognition with an encoder + BiLSTM + CRF head.

Importing the package does two things to transformers, both additive for every other model:

- it registers the config and model with the Auto classes (so `AutoModelForTokenClassification.from_pretrained`
  loads a saved folder in this process without `trust_remote_code`);
- it routes `pipeline("token-classification", model=...)` for a model object of this kind (built here, or loaded
  from a folder) to the CRF pipeline instead of the built-in argmax one. Transformers chooses a pipeline class by
  task alone when it is given a model object, so this takes a registry entry: [`TokenClassificationDispatch`],
  which builds transformers' own `TokenClassificationPipeline`, unchanged, for every other model.

Every folder the model's `save_pretrained` writes (directly, through `push_to_hub`, the pipeline's `save_pretrained`,
or training) carries the code and names the pipeline in its config: `pipeline("token-classification", model=folder,
trust_remote_code=True)` works in any process, without this package. There, for a model object, pass
`pipeline_class=` or build the pipeline directly: `KoElectraCrfTokenClassificationPipeline(model=model,
tokenizer=tokenizer)`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, TokenClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_koelectra_crf import KLUE_LABELS, KoElectraCrfConfig
from .crf import LinearChainCRF, bio_constraints
from .modeling_koelectra_crf import KoElectraCrfForTokenClassification, KoElectraCrfOutput, log_messages_dropped
from .pipeline_koelectra_crf import TASK, KoElectraCrfTokenClassificationPipeline


class TokenClassificationDispatch(TokenClassificationPipeline):
    """The "token-classification" registry entry while this package is imported: the CRF pipeline for a model of
    type `koelectra-crf`, transformers' own `TokenClassificationPipeline` for every other model.

    Never an instance of this class: constructing it returns one of the two pipelines. It subclasses the built-in
    class only so that `pipeline()` reads the built-in's loading flags (tokenizer, processors) from it.
    """

    def __new__(cls, model=None, **kwargs) -> TokenClassificationPipeline | KoElectraCrfTokenClassificationPipeline:
        if getattr(getattr(model, "config", None), "model_type", None) == KoElectraCrfConfig.model_type:
            return KoElectraCrfTokenClassificationPipeline(model=model, **kwargs)
        return TokenClassificationPipeline(model=model, **kwargs)


AutoConfig.register(KoElectraCrfConfig.model_type, KoElectraCrfConfig)
AutoModel.register(KoElectraCrfConfig, KoElectraCrfForTokenClassification)
AutoModelForTokenClassification.register(KoElectraCrfConfig, KoElectraCrfForTokenClassification)


# Replacing the entry is the point (see above): transformers' "already registered, overwriting" warning is dropped
# from its logger for this one call, nothing else about logging changes.
with log_messages_dropped("transformers.pipelines.base", "already registered. Overwriting pipeline"):
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=TokenClassificationDispatch, pt_model=AutoModelForTokenClassification, type="text"
    )

__all__ = [
    "KLUE_LABELS",
    "KoElectraCrfConfig",
    "KoElectraCrfForTokenClassification",
    "KoElectraCrfOutput",
    "KoElectraCrfTokenClassificationPipeline",
    "LinearChainCRF",
    "TokenClassificationDispatch",
    "bio_constraints",
]
