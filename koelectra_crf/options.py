"""The named choices and defaults of the command line's options, declared once for the modules that implement them.

The command line builds its parser from these, so this module imports only the standard library:
`koelectra-crf --help` and `koelectra-crf COMMAND --help` start without torch, transformers or datasets.
"""

INPUT_FORMATS = ("auto", "text", "tsv", "jsonl", "klue")
"""Formats of raw input texts (`inputs.read_records`)."""

READ_FORMATS = ("auto", "jsonl", "doccano", "label-studio", "conll", "conll-char", "klue", "datasets")
"""Formats of labelled data that `formats.read_examples` reads."""

WRITE_FORMATS = ("jsonl", "doccano", "label-studio", "conll", "conll-char", "klue")
"""Formats of labelled data that `formats.write_examples` writes."""

TAG_SCHEMES = ("auto", "bio", "iob1", "bioes", "bilou")
"""Tagging schemes of column data ("auto": told by the tags themselves)."""

TOKEN_UNITS = ("auto", "word", "char")
"""What a line of column data holds ("auto": told by the data)."""

QUANTIZATIONS = ("int8", "int8-full")
"""ONNX export quantizations: int8 weights but the feed-forward output projections; int8-full: all."""

CONFIDENCES = ("sequence_probability", "min_entity_probability")
"""The confidences of a pseudo-labelled sentence that a threshold may apply to."""

CONFIDENCE_SUFFIX = ".confidence.jsonl"
"""Appended to a pseudo-label output file's name: the file of its sentences' confidences."""

SPACING_CONDITIONS = ("as-is", "noisy", "none")
"""Spacing conditions of evaluation: text as written, with spacing noise, without spaces."""

DEFAULT_REMOVE_RATE = 0.3
"""Spacing noise: the share of spaces removed."""

DEFAULT_INSERT_RATE = 0.05
"""Spacing noise: the share of gaps between two non-space characters given a space."""

CALIBRATION_BINS = 15
"""Equal-width confidence bins of the reliability diagram and ECE."""

ABLATION_STUDIES = ("ablation", "heads")
"""`ablation.STUDIES` by name: the original project's six variants, and plain fine-tuning against the two heads."""
