"""Fine-tune on KLUE NER: `accelerate launch training/run.py --config PRESET.json [flags]`.

The training itself is `koelectra_crf.train` (also `python -m koelectra_crf.train`); `--help` lists every flag.
"""

from koelectra_crf.train import script_main

if __name__ == "__main__":
    script_main()
