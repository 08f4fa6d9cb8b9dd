"""What morpheme features (`KoElectraCrfConfig(morpheme_features=True)`) cost the pipeline: its throughput with and
without them, in the same run.

    python benchmarks/morpheme_cost.py                    # multilingual-e5-small-ko from ../shared, 200 sentences

Two character-head models tag the same KLUE sentences with the same batch size: one on the e5 encoder (a random
head), and the same one with the setting, whose BiLSTM weights for the morpheme embedding are zero, so that both find
the same entities and the pipeline does the same work after the network (checked). The runs alternate and each
model keeps its fastest. Kiwi is loaded before timing (once per process). Prints one JSON object: sentences per
second of each, `throughput_ratio` (with / without: 0.8 would be 20% fewer sentences a second) and the time Kiwi
alone takes to analyse the sentences (`alignment.morpheme_codes`), in all, per sentence and as a share of the time
with the setting: the part of the cost that does not depend on the model's speed.
"""

import argparse
import json
import time

import torch
from shared_data import E5, SENTENCES
from transformers import AutoTokenizer

from koelectra_crf import KoElectraCrfForTokenClassification, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import morpheme_codes
from koelectra_crf.inputs import read_texts


def with_morpheme_features(plain: KoElectraCrfForTokenClassification) -> KoElectraCrfForTokenClassification:
    """`plain` with morpheme features that change none of its outputs: its weights, and zero BiLSTM input weights for
    the morpheme embedding (the BiLSTM's input is the character features, the morpheme embedding last)."""
    config = type(plain.config).from_dict({**plain.config.to_dict(), "morpheme_features": True})
    model = KoElectraCrfForTokenClassification(config)
    weights = plain.state_dict()
    for name in ("bilstm.weight_ih_l0", "bilstm.weight_ih_l0_reverse"):
        weights[name] = torch.cat(
            [weights[name], weights[name].new_zeros(len(weights[name]), config.char_embedding_size)], 1
        )
    weights["characters.morphemes.weight"] = model.characters.morphemes.weight
    model.load_state_dict(weights)
    return model.eval()


def spans(results: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["start"], e["end"], e["entity_group"]) for e in entities] for entities in results]


def seconds(ner, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    ner(texts, aggregation_strategy="simple", batch_size=batch_size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = read_texts(SENTENCES, args.sentences)
    tokenizer = AutoTokenizer.from_pretrained(E5)
    torch.manual_seed(0)
    plain = KoElectraCrfForTokenClassification.from_encoder(str(E5)).eval()
    pipelines = {
        name: KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
        for name, model in (("without", plain), ("with", with_morpheme_features(plain)))
    }
    warm_up = texts[: args.batch_size]  # (and loads Kiwi)
    without, with_ = (
        spans(ner(warm_up, aggregation_strategy="simple", batch_size=args.batch_size)) for ner in pipelines.values()
    )
    if without != with_:
        raise RuntimeError("the two models find different entities: they would not do the same work")
    best = dict.fromkeys(pipelines, float("inf"))
    for _ in range(args.repeats):
        for name, ner in pipelines.items():
            best[name] = min(best[name], seconds(ner, texts, args.batch_size))
    started = time.perf_counter()
    morpheme_codes(texts)
    kiwi_seconds = time.perf_counter() - started
    throughput = {name: len(texts) / elapsed for name, elapsed in best.items()}
    result = {
        "encoder": E5.name,
        "sentences": len(texts),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "sentences_per_second": {name: round(value, 2) for name, value in throughput.items()},
        "throughput_ratio": round(throughput["with"] / throughput["without"], 3),
        "kiwi_seconds": round(kiwi_seconds, 3),
        "kiwi_ms_per_sentence": round(1000 * kiwi_seconds / len(texts), 3),
        "kiwi_share_of_time_with": round(kiwi_seconds / best["with"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
