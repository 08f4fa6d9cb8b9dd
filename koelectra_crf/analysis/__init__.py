"""Analyses of a trained model behind the `koelectra-crf` command (see `koelectra_crf.cli`).

- `predictions`: load a model's CRF pipeline and KLUE data, tag every sentence (`predict_dataset`).
- `evaluation`: KLUE metrics, classification report, per-type F1 chart, character confusion matrix.
- `errors`: gold/predicted entity pairs sorted into error categories, type confusion, examples.
- `calibration`: reliability bins, expected calibration error, temperature scaling of the emissions.
- `attention`: attention heatmaps and the share of attention that goes to entity tokens, layer by layer.
- `benchmark`: latency and throughput of the pipeline.
- `plots`: the PNG charts.
"""
