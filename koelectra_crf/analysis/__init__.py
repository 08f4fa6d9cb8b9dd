"""Analyses of a trained model behind the `koelectra-crf` command (see `koelectra_crf.cli`). They start from the
predictions of `koelectra_crf.evaluation`.

- `report`: the evaluation report: classification report, per-type F1 chart, character confusion matrix.
- `errors`: gold/predicted entity pairs sorted into error categories, type confusion, examples.
- `calibration`: reliability bins, expected calibration error, temperature scaling of the emissions.
- `attention`: attention heatmaps and the share of attention that goes to entity tokens, layer by layer.
- `speed`: latency and throughput of the pipeline (`koelectra-crf benchmark`).
- `plots`: the PNG charts.
"""
