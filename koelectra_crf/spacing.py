"""Korean word spacing (띄어쓰기) as noise with exact labels: one perturbation for evaluation and training.

Real Korean text drops spaces and adds them in the wrong places (chat, reviews, queries, OCR and speech-to-text
output); KLUE's sentences are edited text. [`perturb_spacing`] removes spaces and inserts spaces at given rates and
keeps every label exact: the characters other than spaces and their tags are unchanged, a space inserted inside an
entity is inside it (`I-X`, as KLUE tags a space there) and one inserted between two entities or beside one is
outside (`O`). KLUE's metrics drop the spaces before scoring (`metrics.klue_ner_metrics`), so the gold sequence they
score is the same under every spacing and scores across spacings compare the model's output alone.

- Evaluation (`koelectra-crf evaluate MODEL --spacing as-is noisy none`): [`perturb_dataset`] makes a KLUE split
  of each condition ([`SPACING_CONDITIONS`]), seeded.
- Training (`--spacing_augmentation SHARE`): [`SpacingAugmentation`] perturbs a share of the training sentences,
  drawn afresh every epoch from (seed, epoch, sentence), so a resumed run and every process of a distributed one
  see the same perturbations; [`SpacingAugmentationCallback`] tells it the epoch.
"""

import logging
import math
import random
from collections.abc import Sequence

import torch
from datasets import Dataset
from transformers import TrainerCallback

from koelectra_crf.alignment import OUTSIDE, entity_type
from koelectra_crf.data import klue_features, label_names, sentence_windows, tags_to_ids
from koelectra_crf.options import DEFAULT_INSERT_RATE, DEFAULT_REMOVE_RATE, SPACING_CONDITIONS

logger = logging.getLogger(__name__)

SPACE = " "
"""The space that is removed and inserted: U+0020, the one character KLUE's metrics drop (other whitespace is kept,
as the metrics score it)."""


def condition_rates(condition: str, remove_rate: float, insert_rate: float) -> tuple[float, float]:
    """(remove rate, insert rate) of an evaluation condition: `noisy` takes the given rates."""
    rates = {"as-is": (0.0, 0.0), "noisy": (remove_rate, insert_rate), "none": (1.0, 0.0)}
    if condition not in rates:
        raise ValueError(f"unknown spacing condition {condition!r}: use one of {SPACING_CONDITIONS}")
    return rates[condition]


def check_rate(name: str, rate: float) -> None:
    """Raise unless `rate` is a share, 0 to 1."""
    if not 0 <= rate <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {rate}")


def perturb_spacing(
    characters: Sequence[str], tags: Sequence[str], remove_rate: float, insert_rate: float, rng: random.Random
) -> tuple[list[str], list[str]]:
    """The characters of a sentence and their BIO tag names with their spacing perturbed.

    Each space ([`SPACE`]) is removed with probability `remove_rate`, and each gap between two characters that are
    not whitespace is given a space with probability `insert_rate` (the gaps of the input: a removed space leaves no
    new gap). One `rng.random()` draw per space and per such gap, in text order. The other characters and their tags
    are unchanged, and so are the tags of the spaces kept; an inserted space is `I-X` where it falls inside an entity
    (the character after it continues the entity of the one before it), else `O`. Rates of 0 give the input back;
    `remove_rate=1, insert_rate=0` removes every space.
    """
    check_rate("remove_rate", remove_rate)
    check_rate("insert_rate", insert_rate)
    if len(characters) != len(tags):
        raise ValueError(f"{len(characters)} characters but {len(tags)} tags")
    new_characters, new_tags = [], []
    for i, (character, tag) in enumerate(zip(characters, tags, strict=True)):
        if character == SPACE and rng.random() < remove_rate:
            continue
        new_characters.append(character)
        new_tags.append(tag)
        after = i + 1
        if after < len(characters) and not (character.isspace() or characters[after].isspace()):
            if rng.random() < insert_rate:
                label_type = entity_type(tag)
                inside = label_type is not None and tags[after] == f"I-{label_type}"
                new_characters.append(SPACE)
                new_tags.append(tags[after] if inside else OUTSIDE)
    return new_characters, new_tags


def perturb_example(
    example: dict, names: list[str], remove_rate: float, insert_rate: float, rng: random.Random
) -> dict:
    """A KLUE example (`sentence`, `tokens`, `ner_tags` as ids of `names`) with its spacing perturbed
    ([`perturb_spacing`]); its other fields are kept."""
    tokens, tags = perturb_spacing(
        example["tokens"], [names[i] for i in example["ner_tags"]], remove_rate, insert_rate, rng
    )
    label2id = {name: i for i, name in enumerate(names)}
    return {**example, "sentence": "".join(tokens), "tokens": tokens, "ner_tags": tags_to_ids(tags, label2id)}


def sentence_rng(seed: int, *keys: int) -> random.Random:
    """The random generator of one sentence: the same in every process and Python run (a string seed is hashed with
    SHA-512, not with Python's salted `hash`)."""
    return random.Random("/".join(str(key) for key in (seed, *keys)))


def perturb_dataset(dataset: Dataset, remove_rate: float, insert_rate: float, seed: int = 0) -> Dataset:
    """A KLUE split (see `data.load_klue_ner`) with every sentence's spacing perturbed, sentence i drawing from
    `sentence_rng(seed, i)`: the first N sentences of a split get the same noise as in the whole split."""
    check_rate("remove_rate", remove_rate)
    check_rate("insert_rate", insert_rate)
    if remove_rate == insert_rate == 0:
        return dataset
    names = label_names(dataset)

    def perturb(example: dict, index: int) -> dict:
        return perturb_example(example, names, remove_rate, insert_rate, sentence_rng(seed, index))

    return dataset.map(perturb, with_indices=True, features=klue_features(names), desc="Perturbing spacing")


class SpacingAugmentation(torch.utils.data.Dataset):
    """Training rows (as `data.tokenize_and_align` makes them) with the spacing of a share of the sentences
    perturbed, drawn afresh every epoch.

    In epoch e, sentence i is perturbed when the first draw of `sentence_rng(seed, e, i)` falls below `share`, with
    that generator ([`perturb_spacing`], labels exact). The rows are the windows of the sentences as written, in
    `tokenize_and_align`'s order, so the dataset's length, and what a sampler (random, or grouped by length, which
    reads the lengths of the first epoch's rows once) draws, do not change from epoch to epoch: a perturbed sentence
    whose windows would be more or fewer than its windows as written (spaces change the number of tokens) stays as
    written in that epoch, and is counted in the log. With `share=0` the rows are `tokenize_and_align`'s.

    [`set_epoch`] draws an epoch's sentences (the callback calls it at every epoch's start; accelerate's data loader
    calls it too where it reaches the dataset). The draws depend on (seed, epoch, sentence) alone: a resumed run, and
    every process of a distributed one, see the same perturbations.
    """

    def __init__(
        self,
        sentences: Dataset,
        tokenizer,
        config,
        share: float,
        remove_rate: float = DEFAULT_REMOVE_RATE,
        insert_rate: float = DEFAULT_INSERT_RATE,
        seed: int = 0,
    ):
        for name, rate in (("share", share), ("remove_rate", remove_rate), ("insert_rate", insert_rate)):
            check_rate(name, rate)
        self.tokenizer, self.config = tokenizer, config
        self.share, self.remove_rate, self.insert_rate, self.seed = share, remove_rate, insert_rate, seed
        names = label_names(sentences)
        self.characters = list(sentences["tokens"])
        self.tags = [[names[i] for i in tag_ids] for tag_ids in sentences["ner_tags"]]
        self.as_written = sentence_windows(self.characters, self.tags, tokenizer, config)
        self.rows = [(s, w) for s, windows in enumerate(self.as_written) for w in range(len(windows))]
        self.epoch: int | None = None
        self.perturbed: dict[int, list[dict]] = {}  # sentence -> its windows in this epoch
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        sentence, window = self.rows[index]
        return self.perturbed.get(sentence, self.as_written[sentence])[window]

    def set_epoch(self, epoch: int) -> None:
        """Draw the perturbed sentences of `epoch` (nothing to do when they are drawn already)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        chosen, perturbed = [], []
        for s, (characters, tags) in enumerate(zip(self.characters, self.tags, strict=True)):
            rng = sentence_rng(self.seed, epoch, s)
            if rng.random() < self.share:
                chosen.append(s)
                perturbed.append(perturb_spacing(characters, tags, self.remove_rate, self.insert_rate, rng))
        windows = (
            sentence_windows([chars for chars, _ in perturbed], [tags for _, tags in perturbed], self.tokenizer,
                             self.config)
            if perturbed else []
        )  # fmt: skip
        self.perturbed = {
            s: rows for s, rows in zip(chosen, windows, strict=True) if len(rows) == len(self.as_written[s])
        }
        logger.info(
            "spacing augmentation, epoch %d: %d of %d sentences perturbed (%d more drawn but kept as written: their "
            "windows would change)", epoch, len(self.perturbed), len(self.characters), len(chosen) - len(self.perturbed)
        )  # fmt: skip


class SpacingAugmentationCallback(TrainerCallback):
    """Sets the epoch of a [`SpacingAugmentation`] at the start of each epoch of a `Trainer`, also of a resumed one
    (whose state's epoch, e.g. 2.4, is the epoch it resumes in)."""

    def __init__(self, dataset: SpacingAugmentation):
        self.dataset = dataset

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise ValueError(
                "--spacing_augmentation draws new sentences every epoch: persistent data loader workers would keep "
                "the first epoch's; drop --dataloader_persistent_workers"
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch))
