"""koelectra-crf: Korean NER with an encoder + BiLSTM + CRF head."""
