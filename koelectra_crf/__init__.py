"""koelectra-crf: Korean named-entity recognition with an encoder + BiLSTM + CRF head.

Importing the package registers the model with transformers' Auto classes and the CRF pipeline for
"token-classification", so `AutoModelForTokenClassification.from_pretrained(folder)` and
`pipeline("token-classification", model=folder)` work without `trust_remote_code` in this process.
"""

from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification
from transformers.pipelines import PIPELINE_REGISTRY

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
PIPELINE_REGISTRY.register_pipeline(
    "token-classification",
    pipeline_class=KoElectraCrfTokenClassificationPipeline,
    pt_model=AutoModelForTokenClassification,
    type="text",
)

__all__ = [
    "KLUE_LABELS",
    "KoElectraCrfConfig",
    "KoElectraCrfForTokenClassification",
    "KoElectraCrfOutput",
    "KoElectraCrfTokenClassificationPipeline",
    "LinearChainCRF",
    "bio_constraints",
]
