"""Inference Endpoints handler of a koelectra-crf model folder (written into every saved folder as `handler.py`).

A Hugging Face Inference Endpoint (or any server) builds `EndpointHandler(path)` once, `path` being the model
folder, and calls it with each request's JSON:

    {"inputs": "김민준 씨는 부산에서 한빛전자 관계자를 만났다.", "parameters": {"aggregation_strategy": "first"}}
    {"inputs": ["첫 문장.", "두 번째 문장."]}

It answers with the CRF pipeline's output: a list of entities for one text, one list per text for a list of texts.
`parameters` are the pipeline's: `aggregation_strategy` ("simple" unless given, as the Hub's token-classification
API answers; "none" for one entry per token), `ignore_labels`, `stride`, and `respace` (true: re-space each text with
Kiwi before tagging, for text with missing or wrong spaces; needs `pip install kiwipiepy` on the server), and the CRF's
controls: `top_k` (the k most probable analyses, each `{"entities": [...], "probability": p}`), `constraints` (for one
text: `[{"start": 0, "end": 4, "label": "OG"}]`, a type, "ANY" or "O") and `lexicon` (`{"삼성전자": "OG"}`) with
`lexicon_mode` ("hard" or "soft"):

    {"inputs": "삼성전자 주가가 올랐다.", "parameters": {"top_k": 3, "lexicon": {"삼성전자": "OG"}}}

Needs only torch and transformers otherwise (and kiwipiepy for a model with `morpheme_features`): the folder carries the
model's and the pipeline's code.
"""

from typing import Any

from transformers import pipeline

DEFAULT_PARAMETERS = {"aggregation_strategy": "simple"}


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        self.pipeline = pipeline("token-classification", model=path, trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list:
        if "inputs" not in data:
            raise ValueError(f'the request needs "inputs" (a text or a list of texts); it has {sorted(data)}')
        parameters = {**DEFAULT_PARAMETERS, **(data.get("parameters") or {})}
        return self.pipeline(data["inputs"], **parameters)
