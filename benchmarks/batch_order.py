"""How the pipeline orders texts into batches: by number of tokens (what it does) against by number of characters.

    python benchmarks/batch_order.py --model outputs/study-character --threads 1

One process, one loaded model (a saved folder or an ONNX export folder): `--sentences` sentences of
klue-ner-train-sentences.tsv tagged at `--batch_size`, the two orders alternating `--repeats` times (the character
order by swapping the pipeline's sort key in place). Prints one JSON object: sentences per second of each order in
each round, the share of padded encoder positions that hold a token under each order, and the ratio tokens /
characters of the best rounds.
"""

import argparse
import json
import time

import torch
from shared_data import SENTENCES

from koelectra_crf.inputs import read_texts
from koelectra_crf.loading import load_pipeline
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

BY_TOKENS = KoElectraCrfTokenClassificationPipeline._token_counts


def by_characters(ner: KoElectraCrfTokenClassificationPipeline, texts: list) -> list[int]:
    """The sort key the pipeline used before: characters of the caller's text (`texts` as `ner._read` gives them)."""
    return [len(text.sentence) for text in texts]


def filled_share(tokens: list[int], key: list[int], batch_size: int) -> float:
    """Tokens over padded positions when the texts are sorted by `key` and batched, as the pipeline does a list."""
    order = sorted(range(len(tokens)), key=key.__getitem__)
    batches = [[tokens[i] for i in order[first : first + batch_size]] for first in range(0, len(order), batch_size)]
    return sum(map(sum, batches)) / sum(max(batch) * len(batch) for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder or ONNX export folder")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="(default: torch's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ner = load_pipeline(args.model, "cpu")
    sentences = read_texts(SENTENCES, args.sentences)
    read = ner._read(sentences)
    tokens = BY_TOKENS(ner, read)
    orders = {"tokens": BY_TOKENS, "characters": by_characters}
    rates = {name: [] for name in orders}
    ner(sentences[: args.batch_size], batch_size=args.batch_size)  # warm up
    for _ in range(args.repeats):
        for name, key in orders.items():
            ner._token_counts = key.__get__(ner)  # this pipeline object only
            started = time.perf_counter()
            ner(sentences, batch_size=args.batch_size, aggregation_strategy="simple")
            rates[name].append(len(sentences) / (time.perf_counter() - started))
    report = {
        "model": args.model,
        "sentences": args.sentences,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "sentences_per_second": rates,
        "filled_share": {
            "tokens": filled_share(tokens, tokens, args.batch_size),
            "characters": filled_share(tokens, by_characters(ner, read), args.batch_size),
        },
        "tokens_vs_characters": max(rates["tokens"]) / max(rates["characters"]),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
