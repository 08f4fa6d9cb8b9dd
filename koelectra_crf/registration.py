"""What the package's classes add to transformers once a name is taken from the package (`koelectra_crf.__init__`).

Both additions leave every other model as it was:

- the config and model are registered with the Auto classes, so `AutoModelForTokenClassification.from_pretrained`
  loads a saved folder in this process without `trust_remote_code`;
- `pipeline("token-classification", model=...)` for a model object of this kind (built here, or loaded from a folder)
  builds the CRF pipeline instead of the built-in argmax one. Transformers chooses a pipeline class by task alone when
  it is given a model object, so this takes a registry entry: [`TokenClassificationDispatch`], which builds
  transformers' own `TokenClassificationPipeline`, unchanged, for every other model.

Python runs this module once per process, whichever name is asked for first.
"""

from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, TokenClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from koelectra_crf.configuration_koelectra_crf import KoElectraCrfConfig
from koelectra_crf.modeling_koelectra_crf import KoElectraCrfForTokenClassification, log_messages_dropped
from koelectra_crf.pipeline_koelectra_crf import TASK, KoElectraCrfTokenClassificationPipeline


class TokenClassificationDispatch(TokenClassificationPipeline):
    """The "token-classification" registry entry once the package's classes are in use: the CRF pipeline for a model
    of type `koelectra-crf`, transformers' own `TokenClassificationPipeline` for every other model.

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
