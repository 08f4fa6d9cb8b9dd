"""Model card (README.md) of a trained koelectra-crf model folder."""
