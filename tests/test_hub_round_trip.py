"""The Hub lifecycle of a transformers user: every way this project's objects are saved or pushed writes a folder
that loads, in a process that never imported koelectra_crf, through `AutoConfig`, `AutoModel`,
`AutoModelForTokenClassification`, `pipeline(..., trust_remote_code=True)` (the CRF pipeline, never the argmax
one) and its `handler.py`, and tags texts exactly as the original; so does a folder re-saved there, and a re-saved
copy of that. The model is also called directly, the transformers way (`model.prepare_inputs`)."""

import json
import re
import shutil
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError
from tiny import TINY_TEXT, as_saved_before_encoder_tokenization, character_tokenizer, run_as_hub_user, tiny_model
from transformers import AutoModelForTokenClassification, AutoTokenizer

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import NerDataCollator, model_inputs
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments

TEXTS = [TINY_TEXT, TINY_TEXT * 3, unicodedata.normalize("NFD", "김철수는 서울에서 샀다"), "김철수 😀", ""]
TAG_UNITS = ["token", "character"]
LOADERS = ["AutoModel", "AutoModelForTokenClassification", "pipeline"]

# What a Hub user does with a folder, in a process that never imported koelectra_crf. argv[2]: {"texts": [...],
# "folders": [...], "resave": {folder: {loader: new folder}}}. Prints, per folder, what each loader gave.
HUB_USER = r"""
import importlib.util, json, os, sys
import torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer, pipeline
from transformers.dynamic_module_utils import get_relative_imports

job = json.loads(sys.argv[2])
texts, results = job["texts"], {}


def direct_entities(model, tokenizer, texts):
    # The README's "use the model directly": predictions and their characters, for texts of one window.
    inputs = model.prepare_inputs(texts, tokenizer)
    with torch.no_grad():
        outputs = model(**inputs)
    entities = {}
    rows = outputs.overflow_to_sample_mapping.tolist()
    for row, text in enumerate(rows):
        if rows.count(text) > 1:
            continue
        spans, previous = entities.setdefault(text, []), None
        for tag_id, (start, end), tagged in zip(outputs.predictions[row].tolist(),
                                                outputs.offset_mapping[row].tolist(), inputs["tag_mask"][row].tolist()):
            if not tagged:
                continue
            tag = model.config.id2label[tag_id]
            if tag.startswith("I-") and previous == tag[2:]:
                spans[-1][1] = end
            elif tag != "O":
                spans.append([start, end, tag[2:]])
            previous = None if tag == "O" else tag[2:]
    return {str(text): spans for text, spans in entities.items()}


for folder in job["folders"]:
    names = set(os.listdir(folder))
    config_json = json.load(open(os.path.join(folder, "config.json")))
    named = list(config_json["auto_map"].values()) + [config_json["custom_pipelines"]["token-classification"]["impl"]]
    needed = {f"{name.split('.')[0]}.py" for name in named} | {"handler.py"}
    for code in [name for name in names if name.endswith(".py")]:
        needed |= {f"{module}.py" for module in get_relative_imports(os.path.join(folder, code))}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    auto_model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ner = pipeline("token-classification", model=folder, trust_remote_code=True)
    spec = importlib.util.spec_from_file_location("handler", os.path.join(folder, "handler.py"))
    handler_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler_module)
    results[folder] = {
        "missing_files": sorted(needed - names),
        "classes": [type(config).__name__, type(auto_model).__name__, type(model).__name__, type(ner).__name__],
        "entities": ner(texts, aggregation_strategy="simple"),
        "handler": handler_module.EndpointHandler(folder)({"inputs": texts}),
        "direct": direct_entities(model, tokenizer, texts),
    }
    for loader, new_folder in job["resave"].get(folder, {}).items():
        if loader == "pipeline":
            ner.save_pretrained(new_folder)
        else:
            (auto_model if loader == "AutoModel" else model).save_pretrained(new_folder)
            tokenizer.save_pretrained(new_folder)
print(json.dumps({"imported_koelectra_crf": "koelectra_crf" in sys.modules, "results": results}))
"""


def as_hub_user(folders: list[Path], work_dir: Path, resave: dict | None = None) -> dict:
    resave = {str(folder): {loader: str(new) for loader, new in r.items()} for folder, r in (resave or {}).items()}
    payload = {"texts": TEXTS, "folders": [str(folder) for folder in folders], "resave": resave}
    fresh = run_as_hub_user(HUB_USER, work_dir, payload, work_dir)
    assert fresh["imported_koelectra_crf"] is False
    return fresh["results"]


def entity_spans(results: list[list[dict]]) -> dict[str, list[list]]:
    return {str(i): [[e["start"], e["end"], e["entity_group"]] for e in entities] for i, entities in enumerate(results)}


def tiny_ner(
    folder: Path, tag_unit: str, vocabulary: str = "", **config_kwargs
) -> KoElectraCrfTokenClassificationPipeline:
    """A random tiny model that finds entities now and then, with windows short enough that long texts have several;
    its tokenizer knows the characters of `TEXTS` and of `vocabulary`. `config_kwargs`: other settings of its config."""
    torch.manual_seed(0)
    tokenizer = character_tokenizer(folder, texts=[TINY_TEXT, unicodedata.normalize("NFC", TEXTS[2]), vocabulary])
    model = tiny_model(tokenizer.vocab_size, tag_unit=tag_unit, max_length=32, stride=8, **config_kwargs)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


class FakeHub:
    """Stands in for the Hub's commit endpoint: `huggingface_hub.HfApi.create_commit` writes the files of each
    commit into `root/<repo id>`, so that what a push uploads is exactly what gets loaded."""

    def __init__(self, root: Path, monkeypatch):
        self.root = root
        monkeypatch.setattr(
            huggingface_hub.HfApi, "create_repo", lambda _, repo_id, **__: SimpleNamespace(repo_id=repo_id)
        )
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", self.create_commit)
        monkeypatch.setattr(huggingface_hub.ModelCard, "load", self.no_card)

    @staticmethod
    def no_card(repo_id, **_):
        raise EntryNotFoundError(f"{repo_id} has no README.md yet")

    def create_commit(self, repo_id: str, operations, **_):
        for operation in operations:
            target = self.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        return SimpleNamespace(commit_url=f"local://{repo_id}")

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id


def trainer_folders(ner: KoElectraCrfTokenClassificationPipeline, output_dir: Path) -> tuple[list[Path], list]:
    """One training step with `NerTrainer`, saving a checkpoint and the final model; the folders and the trained
    model's entities."""
    texts = [TINY_TEXT, "김철수 😀"]
    rows = model_inputs(texts, ner.tokenizer, ner.model.config, entities=[[(0, 3, "PS"), (5, 7, "LC")], []])
    args = NerTrainingArguments(output_dir=str(output_dir), max_steps=1, save_strategy="steps", save_steps=1,
                                per_device_train_batch_size=2, report_to="none", use_cpu=True, fgm_epsilon=0,
                                rdrop_alpha=0, disable_tqdm=True)  # fmt: skip
    trainer = NerTrainer(model=ner.model, args=args, train_dataset=rows, processing_class=ner.tokenizer,
                         data_collator=NerDataCollator(ner.tokenizer.pad_token_id))  # fmt: skip
    trainer.train()
    trainer.save_model()
    ner.model.eval()
    return [output_dir / "checkpoint-1", output_dir], ner(TEXTS, aggregation_strategy="simple")


@pytest.mark.slow
@pytest.mark.parametrize("tag_unit", TAG_UNITS)
def test_every_save_path_writes_a_folder_that_loads_everywhere(tmp_path, monkeypatch, tag_unit):
    ner = tiny_ner(tmp_path / "tokenizer", tag_unit)
    expected = ner(TEXTS, aggregation_strategy="simple")
    assert any(expected[0]) and any(expected[1])  # entities to compare, also through several windows
    hub = FakeHub(tmp_path / "hub", monkeypatch)

    ner.model.save_pretrained(tmp_path / "model")
    ner.tokenizer.save_pretrained(tmp_path / "model")
    ner.save_pretrained(tmp_path / "pipeline")
    ner.model.push_to_hub("user/model")
    ner.tokenizer.push_to_hub("user/model")
    ner.push_to_hub("user/pipeline")
    # save_pretrained(push_to_hub=True) uploads only what this save wrote: into a folder that holds an older save.
    shutil.copytree(tmp_path / "model", tmp_path / "again")
    ner.model.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="user/again")
    ner.tokenizer.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="user/again")
    saved = [tmp_path / "model", tmp_path / "pipeline"] + [
        hub.repo(f"user/{name}") for name in ("model", "pipeline", "again")
    ]
    assert {"model.safetensors", "README.md", "handler.py", "pipeline_koelectra_crf.py"} <= {
        path.name for path in hub.repo("user/model").iterdir()
    }

    # Re-saved by a Hub user through each loader, then the re-saved copy of a re-saved copy.
    resaved = {loader: tmp_path / f"resaved-{loader}" for loader in LOADERS}
    twice = {loader: tmp_path / f"twice-{loader}" for loader in LOADERS}
    first = as_hub_user(saved, tmp_path, resave={tmp_path / "model": resaved})
    second = as_hub_user(list(resaved.values()), tmp_path, resave={resaved[loader]: {loader: twice[loader]}
                                                                    for loader in LOADERS})  # fmt: skip
    third = as_hub_user(list(twice.values()), tmp_path)

    expected_json = json.loads(json.dumps(expected))
    for folder, result in {**first, **second, **third}.items():
        assert result["missing_files"] == [], folder
        assert result["classes"] == [
            "KoElectraCrfConfig", "KoElectraCrfForTokenClassification", "KoElectraCrfForTokenClassification",
            "KoElectraCrfTokenClassificationPipeline",
        ]  # fmt: skip
        assert result["entities"] == expected_json, folder
        assert result["handler"] == expected_json, folder
        # Called directly, the model gives the pipeline's entities for every text of one window.
        single_window = {key: spans for key, spans in entity_spans(expected).items() if key in result["direct"]}
        assert result["direct"] == single_window and set(single_window) == {"2", "3", "4"}, folder
        assert any(single_window.values())


@pytest.mark.slow
def test_trainer_checkpoints_and_final_folder_load_everywhere(tmp_path):
    ner = tiny_ner(tmp_path / "tokenizer", "character")
    folders, expected = trainer_folders(ner, tmp_path / "run")
    for folder, result in as_hub_user(folders, tmp_path).items():
        assert result["missing_files"] == [], folder
        assert result["classes"][-1] == "KoElectraCrfTokenClassificationPipeline"
        assert result["entities"] == json.loads(json.dumps(expected)), folder


# A Hub user's process loads a folder whose config.json names `encoder_tokenization` by its old name, tags texts
# and re-saves the config into ./resaved.
OLD_CONFIG_USER = """
import json, sys
from transformers import AutoConfig, pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
config.save_pretrained("resaved")
ner = pipeline("token-classification", model=folder, trust_remote_code=True)
print(json.dumps({
    "encoder_tokenization": config.encoder_tokenization, "old_attribute": hasattr(config, "tokenization"),
    "resaved": json.load(open("resaved/config.json")), "entities": ner(texts, aggregation_strategy="simple"),
    "imported_koelectra_crf": "koelectra_crf" in sys.modules,
}))
"""


@pytest.mark.slow
def test_a_folder_saved_before_encoder_tokenization_was_renamed_loads_through_the_remote_code(tmp_path):
    """A folder whose config.json says `tokenization` (the setting's old name) loads through the Auto classes with
    the setting, tags as the model it was saved from, and re-saves with the new name only."""
    ner = tiny_ner(tmp_path / "tokenizer", "character", encoder_tokenization="char")
    expected = ner(TEXTS, aggregation_strategy="simple")
    assert any(expected[0])
    ner.save_pretrained(tmp_path / "old")
    as_saved_before_encoder_tokenization(tmp_path / "old")
    result = run_as_hub_user(OLD_CONFIG_USER, tmp_path / "old", TEXTS, tmp_path)
    assert result["imported_koelectra_crf"] is False
    assert result["encoder_tokenization"] == "char" and result["old_attribute"] is False
    assert result["resaved"]["encoder_tokenization"] == "char" and "tokenization" not in result["resaved"]
    assert result["entities"] == json.loads(json.dumps(expected))


@pytest.mark.parametrize("tag_unit", TAG_UNITS)
def test_prepare_inputs_gives_every_window_and_the_characters_of_each_tag(tmp_path, tag_unit):
    ner = tiny_ner(tmp_path, tag_unit)
    model, tokenizer = ner.model, ner.tokenizer
    inputs = model.prepare_inputs(TEXTS, tokenizer)
    rows = inputs["overflow_to_sample_mapping"].tolist()
    assert rows == sorted(rows) and set(rows) == set(range(len(TEXTS))) and rows.count(1) > 1  # nothing cut
    with torch.no_grad():
        outputs = model(**inputs)
    assert torch.equal(outputs.offset_mapping, inputs["offset_mapping"])
    assert outputs.predictions.shape == outputs.offset_mapping.shape[:2] == inputs["tag_mask"].shape
    for row, text_index in enumerate(rows):
        text = TEXTS[text_index]
        spans = inputs["offset_mapping"][row][inputs["tag_mask"][row]].tolist()
        assert all(0 <= start < end <= len(text) and not text[start:end].isspace() for start, end in spans)
        assert spans == sorted(spans)
        untagged = inputs["offset_mapping"][row][~inputs["tag_mask"][row]]
        assert not untagged.any()
    # The offsets are in the caller's string, also for decomposed Hangul: 김 is three code points there.
    nfd_row = rows.index(2)
    first = inputs["offset_mapping"][nfd_row][inputs["tag_mask"][nfd_row]][0].tolist()
    assert first == ([0, 3] if tag_unit == "character" else [0, len(unicodedata.normalize("NFD", "김"))])


def test_prepare_inputs_with_entities_gives_the_training_labels(tmp_path):
    """Labels from character spans are the ones training builds from KLUE tags, and the loss is the model's."""
    ner = tiny_ner(tmp_path, "character")
    model, tokenizer = ner.model, ner.tokenizer
    text = "김철수는 서울에서 샀다"
    inputs = model.prepare_inputs([text], tokenizer, entities=[[(0, 3, "PS"), (5, 7, "LC")]])
    labels = [model.config.id2label[i] for i in inputs["labels"][0].tolist()]
    assert labels == ["B-PS", "I-PS", "I-PS", "O", "B-LC", "I-LC", "O", "O", "O", "O"]
    model.train()
    loss = model(**inputs).loss
    loss.backward()
    assert loss.item() > 0 and model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "entities,message",
    [([(0, 3, "PRD")], "the model has no type 'PRD' (its types: DT, LC, OG, PS, QT, TI)"),
     ([(0, 30, "PS")], "not a non-empty span inside the text"),
     ([(2, 2, "PS")], "not a non-empty span inside the text"),
     ([(0, 3, "PS"), (2, 4, "LC")], "overlaps the entity before it")],
)  # fmt: skip
def test_prepare_inputs_refuses_entities_it_cannot_label(tmp_path, entities, message):
    ner = tiny_ner(tmp_path, "character")
    with pytest.raises(ValueError, match=re.escape(message)):
        ner.model.prepare_inputs(["김철수는 서울에서"], ner.tokenizer, entities=[entities])


def test_character_inputs_missing_name_the_function_that_builds_them(tmp_path):
    ner = tiny_ner(tmp_path, "character")
    with pytest.raises(ValueError, match=r"model\.prepare_inputs\(texts, tokenizer\)"):
        ner.model(**ner.tokenizer([TINY_TEXT], return_tensors="pt"))


def test_auto_tokenizer_in_the_readme_always_trusts_remote_code():
    """transformers' AutoTokenizer reads config.json before the tokenizer's files, and a config of a model type it
    does not know needs the remote code: without `trust_remote_code=True` it asks on the terminal. So every README
    call passes it (and the README says why)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    calls = [line for line in readme.splitlines() if "AutoTokenizer.from_pretrained(" in line]
    assert calls and all("trust_remote_code=True" in call for call in calls)
    assert "stops to ask" in readme.split("## Loading from the Hub")[1].split("\n## ")[0]


def test_a_folder_loaded_in_this_process_re_saves_complete(tmp_path):
    """With the package imported (the Auto classes registered), a loaded model re-saves a complete folder too."""
    ner = tiny_ner(tmp_path / "tokenizer", "character")
    ner.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "saved")
    loaded.save_pretrained(tmp_path / "again")
    AutoTokenizer.from_pretrained(tmp_path / "saved").save_pretrained(tmp_path / "again")
    names = {path.name for path in (tmp_path / "saved").iterdir()}
    assert names == {path.name for path in (tmp_path / "again").iterdir()}
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForTokenClassification"}
    assert config["custom_pipelines"]["token-classification"]["impl"].startswith("pipeline_koelectra_crf.")


# Runs a README snippet as written, with the Hub's repo ids turned into folders of the working directory and the
# Hub's commit call intercepted (FakeHub's, in a process of its own).
README_SNIPPET = r"""
import json, shutil, sys
from pathlib import Path
from types import SimpleNamespace
import huggingface_hub
from huggingface_hub.errors import EntryNotFoundError

def create_commit(self, repo_id, operations, **_):
    for operation in operations:
        target = Path("pushed", repo_id, operation.path_in_repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(operation.path_or_fileobj, target)

def no_card(repo_id, **_):
    raise EntryNotFoundError(repo_id)

huggingface_hub.HfApi.create_repo = lambda self, repo_id, **_: SimpleNamespace(repo_id=repo_id)
huggingface_hub.HfApi.create_commit = create_commit
huggingface_hub.ModelCard.load = no_card
snippet = json.loads(sys.argv[2])
namespace = {}
exec(snippet, namespace)
pushed = sorted(path.name for path in Path("pushed/YOU/my-ner").iterdir())
print(json.dumps({"pipeline": type(namespace["ner"]).__name__, "pushed": pushed}))
"""


def readme_hub_snippets(tmp_path: Path) -> tuple[list[str], Path]:
    """The Python snippets of the README's "Loading from the Hub" section, with the published repo id turned into a
    folder holding a tiny character-head model whose tokenizer knows the section's characters."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Loading from the Hub")[1].split("\n## ")[0]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(snippets) == 3
    published = tmp_path / "YOU" / "koelectra-crf-klue-ner"
    tiny_ner(tmp_path / "tokenizer", "character", vocabulary=section).save_pretrained(published)
    return [snippet.replace('"YOU/koelectra-crf-klue-ner"', repr(str(published))) for snippet in snippets], published


@pytest.mark.slow
def test_the_readme_hub_snippets_run_as_written(tmp_path):
    snippets, _ = readme_hub_snippets(tmp_path)
    result = run_as_hub_user(README_SNIPPET, tmp_path, "\n".join(snippets[:2]), tmp_path)
    assert result["pipeline"] == "KoElectraCrfTokenClassificationPipeline"
    assert {"model.safetensors", "config.json", "tokenizer.json", "handler.py", "modeling_koelectra_crf.py",
            "pipeline_koelectra_crf.py"} <= set(result["pushed"])  # fmt: skip


TRAINER_SNIPPET = r"""
import json, sys
exec(json.loads(sys.argv[2]), namespace := {})
losses = [entry["loss"] for entry in namespace["trainer"].state.log_history if "loss" in entry]
from transformers import pipeline
ner = pipeline("token-classification", model="my-ner", trust_remote_code=True)
print(json.dumps({"rows": len(namespace["features"]), "columns": namespace["features"].column_names, "losses": losses,
                  "pipeline": type(ner).__name__, "imported_koelectra_crf": "koelectra_crf" in sys.modules}))
"""


@pytest.mark.slow
def test_the_plain_trainer_fine_tunes_the_character_head_without_the_package(tmp_path):
    """The README's `Trainer` snippet, as written, in a process that cannot import koelectra_crf: the rows carry the
    character inputs and labels, the model learns (the loss falls), and the folder it saves gives the CRF pipeline."""
    snippets, published = readme_hub_snippets(tmp_path)
    code = snippets[2].replace('TrainingArguments("my-ner-run", ', 'TrainingArguments("my-ner-run", logging_steps=1, ')
    result = run_as_hub_user(TRAINER_SNIPPET, tmp_path, code, tmp_path)
    assert result["imported_koelectra_crf"] is False
    assert result["rows"] == 2 and {"char_codes", "labels", "tag_mask"} <= set(result["columns"])
    assert len(result["losses"]) == 5 and result["losses"][-1] < result["losses"][0]
    assert result["pipeline"] == "KoElectraCrfTokenClassificationPipeline"
