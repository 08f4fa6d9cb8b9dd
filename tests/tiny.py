"""Tiny random models and tokenizers built inside the tests (no download, no ../shared), and loading a saved
folder in a fresh process."""

import json
import os
import sys
import textwrap
from pathlib import Path

from processes import run_command
from transformers import BertConfig, ElectraConfig, ElectraTokenizerFast

from koelectra_crf import KLUE_LABELS, KoElectraCrfConfig, KoElectraCrfForTokenClassification

TINY_TEXT = "김철수는 서울에서 2024년 3월 1일 오전 9시에 삼성전자 사과 3개를 샀다. ABC 123 李 😀"


def character_tokenizer(folder: Path, text: str = TINY_TEXT, texts: list[str] | None = None) -> ElectraTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is the characters of `text` (or of all `texts`), each also as a `##`
    piece: no download, every character known. The vocabulary is written to `folder/vocab.txt`."""
    chars = sorted({char for line in (texts or [text]) for char in line if not char.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{char}" for char in chars]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return ElectraTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False)


def tiny_encoder_config(vocab_size: int, model_type: str = "electra"):
    sizes = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "max_position_embeddings": 512}  # fmt: skip
    if model_type == "electra":
        return ElectraConfig(embedding_size=16, **sizes)
    return BertConfig(pad_token_id=0, **sizes)


def tiny_model(vocab_size: int, labels=KLUE_LABELS, model_type: str = "electra", **config_kwargs):
    config = KoElectraCrfConfig(
        encoder=tiny_encoder_config(vocab_size, model_type),
        labels=labels,
        lstm_hidden_size=8,
        **config_kwargs,
    )
    return KoElectraCrfForTokenClassification(config).eval()


def as_saved_before_encoder_tokenization(folder: Path) -> None:
    """Rewrite `folder`'s config.json as the package wrote it before `encoder_tokenization` was renamed: under the
    key `tokenization`."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenization"] = config.pop("encoder_tokenization")
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


FRESH_PROCESS = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer, pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
AutoModel.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(**model.prepare_inputs(texts, tokenizer)).logits.tolist()
ner = pipeline("token-classification", model=folder, trust_remote_code=True)
print(json.dumps({
    "config_class": type(config).__name__, "model_class": type(model).__name__,
    "pipeline_class": type(ner).__name__, "imported_koelectra_crf": "koelectra_crf" in sys.modules,
    "logits": logits,
    "entities": ner(texts, aggregation_strategy="simple"),
}))
"""


# A Hub user has no koelectra_crf: the process a test runs as one cannot import it, even where it is installed.
NO_PACKAGE = """
import sys


class NoKoelectraCrf:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "koelectra_crf":
            raise ImportError("koelectra_crf is not installed for a Hub user")


sys.meta_path.insert(0, NoKoelectraCrf())
"""


def run_as_hub_user(script: str, folder: Path, payload, work_dir: Path) -> dict:
    """Run `script` (given argv[1] = `folder`, argv[2] = `payload` as JSON) in a new Python process that cannot import
    the package (offline, its own remote-code cache, one thread); return the JSON of its last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work_dir / "modules"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    completed = run_command(
        [sys.executable, "-c", NO_PACKAGE + textwrap.dedent(script), folder, json.dumps(payload)],
        env=env, cwd=work_dir, timeout=300,
    )  # fmt: skip
    return json.loads(completed.stdout.strip().splitlines()[-1])


def load_in_fresh_process(folder: Path, texts: list[str], work_dir: Path) -> dict:
    """Load `folder` through the Auto classes and `pipeline(..., trust_remote_code=True)` in a new Python process
    that never imports koelectra_crf (offline), and return its logits and entities for `texts`."""
    fresh = run_as_hub_user(FRESH_PROCESS, folder, texts, work_dir)
    assert fresh["imported_koelectra_crf"] is False
    assert fresh["config_class"] == "KoElectraCrfConfig"
    assert fresh["model_class"] == "KoElectraCrfForTokenClassification"
    assert fresh["pipeline_class"] == "KoElectraCrfTokenClassificationPipeline"
    return fresh
