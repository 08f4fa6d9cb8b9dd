"""How a user lexicon changes entity F1 (#34): KLUE validation sentences tagged without a lexicon, with it as hard
constraints and as a soft bonus (`LEXICON_BONUS`), the lexicon built from the training split's gold entities.

The lexicon maps each gold entity's surface form of the training file (two characters or more) to its most frequent
type there. `coverage` is the share of the validation file's gold entities whose surface form the lexicon holds with
their type (what the lexicon could fix at best); `ambiguous` the share of the lexicon's forms seen with more than one
type in training. Metrics are `klue_ner_metrics` (entity and character F1, × 100). Prints one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/lexicon_f1.py --model outputs/run/checkpoint-880 \\
        --train_file ../shared/data/klue-ner-v1.1/klue-ner-v1.1_dev-train.tsv \\
        --valid_file ../shared/data/klue-ner-v1.1/klue-ner-v1.1_dev-valid.tsv
"""

import argparse
import json
import time
from collections import Counter, defaultdict

from koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import char_tags_to_spans
from koelectra_crf.data import example_tag_names, label_names, load_klue_split
from koelectra_crf.evaluation import model_labels, predict_dataset, prediction_metrics
from koelectra_crf.loading import load_model


def gold_entities(dataset) -> list[tuple[str, str]]:
    """(surface form, type) of every gold entity of a KLUE split."""
    names = label_names(dataset)
    return [
        (example["sentence"][start:end], label)
        for example in dataset
        for start, end, label in char_tags_to_spans(example_tag_names(example, names))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--valid_file", required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    types = defaultdict(Counter)
    for surface, label in gold_entities(load_klue_split(args.train_file)):
        if len(surface.strip()) >= 2:
            types[surface][label] += 1
    lexicon = {surface: counts.most_common(1)[0][0] for surface, counts in types.items()}
    valid = load_klue_split(args.valid_file)
    valid_entities = gold_entities(valid)
    model, tokenizer = load_model(args.model)
    results = {}
    for mode in ("none", "hard", "soft"):
        control = {} if mode == "none" else {"lexicon": lexicon, "lexicon_mode": mode}
        ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer, device="cpu", **control)
        start = time.perf_counter()
        metrics = prediction_metrics(predict_dataset(ner, valid, args.batch_size), model_labels(ner.model))
        results[mode] = {**{k: round(v, 2) for k, v in metrics.items()}, "seconds": round(time.perf_counter() - start)}
    print(json.dumps({
        "model": args.model, "validation_sentences": len(valid), "lexicon_forms": len(lexicon),
        "ambiguous": round(sum(len(c) > 1 for c in types.values()) / len(types), 3),
        "coverage": round(sum(lexicon.get(s) == label for s, label in valid_entities) / len(valid_entities), 3),
        "results": results,
    }, ensure_ascii=False, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
