"""`python -m koelectra_crf ...` is the `koelectra-crf` command (and `accelerate launch -m koelectra_crf ...` runs it
in several processes)."""

from koelectra_crf.cli import main

main()
