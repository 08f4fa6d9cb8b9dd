"""koelectra-crf: Korean named-entity recognition with an encoder + BiLSTM + CRF head.

Importing the package registers the config and model with transformers' Auto classes (so
`AutoModelForTokenClassification.from_pretrained(folder)` needs no `trust_remote_code` in this process) and the CRF
pipeline for "token-classification" (for models built in this process). A folder written by `save_pretrained`
carries the same code and names the pipeline in its config (`custom_pipelines`): load it anywhere with
`pipeline("token-classification", model=folder, trust_remote_code=True)`. For a model object that came from such a
folder, build the pipeline directly: `KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .configuration_koelectra_crf import KLUE_LABELS, KoElectraCrfConfig
from .crf import LinearChainCRF, bio_constraints
from .modeling_koelectra_crf import KoElectraCrfForTokenClassification, KoElectraCrfOutput
from .pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

AutoConfig.register(KoElectraCrfConfig.model_type, KoElectraCrfConfig)
AutoModel.register(KoElectraCrfConfig, KoElectraCrfForTokenClassification)
AutoModelForTokenClassification.register(KoElectraCrfConfig, KoElectraCrfForTokenClassification)
# save_pretrained() then writes `auto_map` and copies the remote-code files next to the weights.
KoElectraCrfConfig.register_for_auto_class()
KoElectraCrfForTokenClassification.register_for_auto_class("AutoModel")
KoElectraCrfForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
# Replacing the built-in "token-classification" entry is deliberate (the CRF pipeline hands models without a CRF
# head back to the built-in one), so transformers' "already registered, overwriting" warning is silenced.
_verbosity = logging.get_verbosity()
logging.set_verbosity_error()
try:
    PIPELINE_REGISTRY.register_pipeline(
        "token-classification",
        pipeline_class=KoElectraCrfTokenClassificationPipeline,
        pt_model=AutoModelForTokenClassification,
        type="text",
    )
finally:
    logging.set_verbosity(_verbosity)

__all__ = [
    "KLUE_LABELS",
    "KoElectraCrfConfig",
    "KoElectraCrfForTokenClassification",
    "KoElectraCrfOutput",
    "KoElectraCrfTokenClassificationPipeline",
    "LinearChainCRF",
    "bio_constraints",
]
