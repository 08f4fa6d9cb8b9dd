"""Kiwi's analyses, recorded here and replayed on the `device` tool's GPU machine, which cannot receive kiwipiepy's
model (88 MB compressed: more than a call may carry beside the encoder and data).

    python training/gpu/kiwi_replay.py OUT.json.gz FILE...   # here (prepare.sh): Kiwi's tokens of every text of FILEs

There, `study.sh` installs this file as the module `kiwipiepy` and sets `KIWI_REPLAY=OUT.json.gz`: its `Kiwi.tokenize`
gives each text the tokens recorded for it (Kiwi's start, length and tag, all that `alignment.morpheme_codes` reads), so
the morpheme codes are Kiwi's own, and a text not recorded stops the run with an error: a replay never guesses.
"""

import gzip
import json
import os
import sys
from typing import NamedTuple


class Token(NamedTuple):
    """The fields of a kiwipiepy `Token` that `alignment.morpheme_codes` reads."""

    start: int
    len: int
    tag: str


class Kiwi:
    """kiwipiepy's `Kiwi` as far as `alignment` uses it, answering from the analyses in the file `KIWI_REPLAY`."""

    def __init__(self, **options):
        with gzip.open(os.environ["KIWI_REPLAY"], "rt", encoding="utf-8") as file:
            self.analyses: dict[str, list] = json.load(file)

    def tokenize(self, texts: list[str]) -> list[list[Token]]:
        missing = [text for text in texts if text not in self.analyses]
        if missing:
            raise KeyError(
                f"kiwi_replay: no recorded analysis of {len(missing)} of the texts, the first {missing[0]!r}: record "
                "them with training/gpu/kiwi_replay.py"
            )
        return [[Token(*token) for token in self.analyses[text]] for text in texts]


def record(output: str, files: list[str]) -> int:
    """Write Kiwi's tokens to `output` for every text of `files` (any labelled-data format) as training and scoring
    read it (`formats.load_split`'s sentences, already in NFC, the form the pipeline gives the model), for the model
    card's examples (training tags them for the card) and for the empty text (training loads Kiwi with it); return
    how many texts."""
    from kiwipiepy import Kiwi as RealKiwi

    from hub_card.render import EXAMPLE_TEXTS
    from koelectra_crf.formats import load_split

    texts = {"", *EXAMPLE_TEXTS}
    for path in files:
        for sentence in load_split(path, path)["sentence"]:
            texts.add(sentence)
    ordered = sorted(texts)
    tokens = RealKiwi(num_workers=1).tokenize(ordered)
    analyses = {text: [[t.start, t.len, t.tag] for t in found] for text, found in zip(ordered, tokens, strict=True)}
    with gzip.open(output, "wt", encoding="utf-8") as file:
        json.dump(analyses, file, ensure_ascii=False)
    return len(analyses)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python training/gpu/kiwi_replay.py OUT.json.gz FILE...")
    print(f"{record(sys.argv[1], sys.argv[2:])} texts' analyses written to {sys.argv[1]}")
