"""The CRF pipeline vs transformers' built-in token-classification pipeline on the same encoder weights.

    python benchmarks/pipeline_speed.py                 # multilingual-e5-small-ko from ../shared
    python benchmarks/pipeline_speed.py --random_encoder  # same architecture, random weights (no ../shared)

Both pipelines get the same encoder weights, tokenizer, batch size and real KLUE sentences; the CRF model tags
tokens (`tag_unit="token"`, as the built-in model does) and has no BiLSTM (the BiLSTM variant is reported
separately). Prints one JSON object with seconds per pipeline and the ratio ours / built-in (target <= 1.10: CRF,
marginals and character alignment cost at most 10%).
"""

import argparse
import copy
import json
import time

import torch
from shared_data import E5, SENTENCES
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline

from koelectra_crf import (
    KoElectraCrfConfig,
    KoElectraCrfForTokenClassification,
    KoElectraCrfTokenClassificationPipeline,
)
from koelectra_crf.inputs import read_texts


def crf_model(random_encoder: bool, use_bilstm: bool) -> KoElectraCrfForTokenClassification:
    if random_encoder:
        torch.manual_seed(0)
        config = KoElectraCrfConfig(encoder=AutoConfig.from_pretrained(E5), use_bilstm=use_bilstm, tag_unit="token")
        return KoElectraCrfForTokenClassification(config)
    return KoElectraCrfForTokenClassification.from_encoder(str(E5), use_bilstm=use_bilstm, tag_unit="token")


def built_in_model(ours: KoElectraCrfForTokenClassification):
    """The plain `*ForTokenClassification` model of the encoder, with our encoder and classifier weights."""
    config = copy.deepcopy(ours.config.encoder)
    config.id2label, config.label2id = ours.config.id2label, ours.config.label2id
    model = AutoModelForTokenClassification.from_config(config)
    base = getattr(model, model.base_model_prefix)
    missing, _ = base.load_state_dict(ours.encoder.state_dict(), strict=False)
    assert not [name for name in missing if "pooler" not in name], missing
    model.classifier.load_state_dict(ours.classifier.state_dict())
    return model


def seconds(ner, texts: list[str], batch_size: int, repeats: int) -> float:
    ner(texts[:batch_size], aggregation_strategy="simple", batch_size=batch_size)  # warm up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        ner(texts, aggregation_strategy="simple", batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--random_encoder", action="store_true")
    args = parser.parse_args()
    texts = read_texts(SENTENCES, args.sentences)
    tokenizer = AutoTokenizer.from_pretrained(E5)
    device = 0 if torch.cuda.is_available() else -1

    crf = crf_model(args.random_encoder, use_bilstm=False).eval()
    pipelines = {
        "built_in": pipeline("token-classification", model=built_in_model(crf).eval(), tokenizer=tokenizer,
                             device=device),
        "crf": KoElectraCrfTokenClassificationPipeline(model=crf, tokenizer=tokenizer, device=device),
        "crf_bilstm": KoElectraCrfTokenClassificationPipeline(
            model=crf_model(args.random_encoder, use_bilstm=True).eval(), tokenizer=tokenizer, device=device),
    }  # fmt: skip
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "sentences": len(texts), "batch_size": args.batch_size}  # fmt: skip
    with torch.inference_mode():
        for name, ner in pipelines.items():
            result[f"{name}_seconds"] = seconds(ner, texts, args.batch_size, args.repeats)
    result["ratio_crf_over_built_in"] = result["crf_seconds"] / result["built_in_seconds"]
    result["ratio_crf_bilstm_over_built_in"] = result["crf_bilstm_seconds"] / result["built_in_seconds"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
