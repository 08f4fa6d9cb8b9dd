"""The model: loss and predictions over tagged positions only, initialisation, from_encoder (and the logging it
hides), batching."""

import itertools
import json
import logging
import sys

import pytest
import torch
from processes import run_command
from safetensors.torch import load_file, save_file
from tiny import TINY_TEXT, as_saved_before_encoder_tokenization, character_tokenizer, tiny_encoder_config, tiny_model
from transformers import AutoModel

from koelectra_crf import KLUE_LABELS, KoElectraCrfConfig, KoElectraCrfForTokenClassification, bio_constraints
from koelectra_crf.alignment import encode_texts
from koelectra_crf.modeling_koelectra_crf import log_messages_dropped


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_loss_and_predictions_use_only_labelled_positions(tmp_path):
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, tag_unit="token")
    batch = _batch(tokenizer, [TINY_TEXT, "김철수는 서울"])
    labels = torch.randint(0, len(KLUE_LABELS), batch["input_ids"].shape)
    labels[:, 0] = -100  # [CLS]
    labels[batch["attention_mask"] == 0] = -100
    labels[0, 5:9] = -100  # e.g. continuation pieces
    output = model(**batch, labels=labels)

    # Oracle: the CRF run on the labelled positions only, gathered to the left by hand.
    losses = []
    for row in range(2):
        keep = (labels[row] != -100).nonzero().squeeze(-1)
        emissions = output.logits[row, keep].unsqueeze(0)
        tags = labels[row, keep].unsqueeze(0)
        mask = torch.ones_like(tags, dtype=torch.bool)
        losses.append(-model.crf.log_likelihood(emissions, tags, mask))
        expected_path = model.crf.decode(emissions, mask)[0]
        assert torch.equal(output.predictions[row, keep], expected_path)
        assert (output.predictions[row][labels[row] == -100] == -100).all()
    torch.testing.assert_close(output.loss, torch.cat(losses).mean())
    assert output.logits.shape == (*batch["input_ids"].shape, len(KLUE_LABELS))


def test_baseline_variant_uses_cross_entropy_and_argmax(tmp_path):
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, use_crf=False, use_bilstm=False, tag_unit="token")
    assert model.crf is None and model.bilstm is None
    batch = _batch(tokenizer, [TINY_TEXT])
    labels = torch.randint(0, len(KLUE_LABELS), batch["input_ids"].shape)
    labels[:, [0, -1]] = -100
    output = model(**batch, labels=labels)
    logits = output.logits[0, 1:-1]
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(logits, labels[0, 1:-1]))
    assert torch.equal(output.predictions[0, 1:-1], logits.argmax(-1))
    assert (output.predictions[0, [0, -1]] == -100).all()


def test_predictions_do_not_depend_on_padding(tmp_path):
    """The BiLSTM is packed: a text's tags are the same alone and next to a longer text."""
    torch.manual_seed(1)
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, use_bilstm=True, tag_unit="token")
    short = "서울에서 3개"
    alone = model(**_batch(tokenizer, [short]))
    padded = model(**_batch(tokenizer, [short, TINY_TEXT]))
    length = alone.logits.shape[1]
    torch.testing.assert_close(padded.logits[0, :length], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_multi_sample_dropout_averages_masks_in_training_only(tmp_path):
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, multi_sample_dropout=5, classifier_dropout=0.5, tag_unit="token")
    batch = _batch(tokenizer, [TINY_TEXT])
    eval_logits = model(**batch).logits
    model.train()
    torch.manual_seed(3)
    train_logits = model(**batch).logits
    assert not torch.allclose(train_logits, eval_logits)
    model.eval()
    torch.testing.assert_close(model(**batch).logits, eval_logits)


def test_crf_parameters_missing_from_a_checkpoint_are_initialised(tmp_path):
    tokenizer = character_tokenizer(tmp_path / "tok")
    model = tiny_model(tokenizer.vocab_size)
    model.save_pretrained(tmp_path / "model")
    weights = load_file(tmp_path / "model" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("crf.")}, tmp_path / "model" / "model.safetensors")
    for _ in range(3):  # uninitialised memory would show up as huge, NaN or identical-to-garbage values
        loaded = KoElectraCrfForTokenClassification.from_pretrained(tmp_path / "model")
        for parameter in (loaded.crf.transitions, loaded.crf.start_transitions, loaded.crf.end_transitions):
            assert torch.isfinite(parameter).all() and parameter.abs().max() <= 0.1
            assert parameter.std() > 0.01
        assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_saved_config_names_its_tag_unit_so_a_changed_default_cannot_change_a_saved_model(tmp_path):
    """The default is the character head; a folder saved with either unit (the default included, as token units
    were before) writes its unit into config.json and loads back with it, the same model."""
    tokenizer = character_tokenizer(tmp_path / "tok")
    assert tiny_model(tokenizer.vocab_size).config.tag_unit == "character"
    for tag_unit in ("token", "character"):
        model = tiny_model(tokenizer.vocab_size, tag_unit=tag_unit)
        model.save_pretrained(tmp_path / tag_unit)
        assert json.loads((tmp_path / tag_unit / "config.json").read_text())["tag_unit"] == tag_unit
        loaded = KoElectraCrfForTokenClassification.from_pretrained(tmp_path / tag_unit)
        assert loaded.config.tag_unit == tag_unit
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for name, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name


def test_a_config_json_with_the_old_name_of_encoder_tokenization_loads_and_saves_the_new_name(tmp_path):
    """`encoder_tokenization` was called `tokenization`: a folder saved then loads with its setting (the model reads
    its texts as before) and saves the new name only."""
    tokenizer = character_tokenizer(tmp_path / "tok")
    model = tiny_model(tokenizer.vocab_size, encoder_tokenization="char")
    model.save_pretrained(tmp_path / "old")
    as_saved_before_encoder_tokenization(tmp_path / "old")
    loaded = KoElectraCrfForTokenClassification.from_pretrained(tmp_path / "old")
    assert loaded.config.encoder_tokenization == "char" and not hasattr(loaded.config, "tokenization")
    expected, inputs = model.prepare_inputs([TINY_TEXT], tokenizer), loaded.prepare_inputs([TINY_TEXT], tokenizer)
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    assert torch.equal(loaded(**inputs).logits, model(**expected).logits)
    loaded.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["encoder_tokenization"] == "char" and "tokenization" not in saved
    assert KoElectraCrfConfig(tokenization="char").encoder_tokenization == "char"
    with pytest.raises(ValueError, match="tokenization='subword' .* contradicts encoder_tokenization='char'"):
        KoElectraCrfConfig(tokenization="subword", encoder_tokenization="char")


def test_constraint_masks_are_rebuilt_when_loading(tmp_path):
    """The BIO masks are non-persistent buffers: loading must rebuild them from the label names."""
    tokenizer = character_tokenizer(tmp_path / "tok")
    tiny_model(tokenizer.vocab_size, labels=sorted(KLUE_LABELS)).save_pretrained(tmp_path / "model")
    loaded = KoElectraCrfForTokenClassification.from_pretrained(tmp_path / "model")
    expected = bio_constraints(sorted(KLUE_LABELS))
    actual = (loaded.crf.allowed_start, loaded.crf.allowed_transitions, loaded.crf.allowed_end)
    for buffer, value in zip(actual, expected, strict=True):
        assert torch.equal(buffer, value)


def test_log_messages_dropped_drops_the_matching_records_inside_the_block_only(caplog):
    logger = logging.getLogger("koelectra_crf.tests")
    with caplog.at_level(logging.INFO, logger="koelectra_crf.tests"):
        with log_messages_dropped("koelectra_crf.tests", "LOAD REPORT"):
            logger.warning("LOAD REPORT of a checkpoint")
            logger.warning("another warning")
        logger.warning("LOAD REPORT after the block")
    assert [record.getMessage() for record in caplog.records] == ["another warning", "LOAD REPORT after the block"]


def test_importing_the_package_does_not_say_it_replaces_the_pipeline_entry():
    """Replacing transformers' "token-classification" entry is the point (`TokenClassificationDispatch`): its warning
    about it is not shown; the logger's other warnings still are."""
    shown = "logging.getLogger('transformers.pipelines.base').warning('another warning')"
    completed = run_command([sys.executable, "-c", f"import logging, koelectra_crf; {shown}"], timeout=120)
    assert "Overwriting pipeline" not in completed.stderr and "another warning" in completed.stderr


def test_from_encoder_keeps_encoder_weights_in_float32(tmp_path, capfd):
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_encoder_config(50, "bert")).half()  # a float16 checkpoint with a pooler
    encoder.save_pretrained(tmp_path / "encoder")
    capfd.readouterr()
    model = KoElectraCrfForTokenClassification.from_encoder(str(tmp_path / "encoder"), lstm_hidden_size=8)
    assert "LOAD REPORT" not in capfd.readouterr().err  # the pooler it drops is no news to the user
    assert model.config.encoder.model_type == "bert"
    assert model.encoder.pooler is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = encoder.state_dict()
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, reference[name].float())
    assert [model.config.id2label[i] for i in range(13)] == KLUE_LABELS


def test_tag_mask_excludes_special_tokens_at_inference(tmp_path):
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, tag_unit="token")
    encoded = encode_texts([TINY_TEXT], tokenizer, "subword")[0]
    window = encoded.window(0, len(encoded.token_ids))
    assert window["tag_mask"] == [False] + encoded.tagged + [False]
    input_ids = torch.tensor([window["input_ids"]])
    tag_mask = torch.tensor([window["tag_mask"]])
    output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), tag_mask=tag_mask)
    assert (output.predictions[0, [0, -1]] == -100).all()
    assert (output.predictions[0, 1:-1] >= 0).all()


@pytest.mark.parametrize("use_crf", [True, False])
def test_entity_and_sequence_probabilities_match_enumeration(tmp_path, use_crf):
    """The model's entity and sequence probabilities against enumerating every tag sequence of a short text (the
    softmax head's tags are independent; the CRF's come from its scores)."""
    torch.manual_seed(0)
    labels = ["B-PS", "I-PS", "O"]
    model = tiny_model(20, labels=labels, use_crf=use_crf)
    emissions = torch.randn(1, 5, 3)
    tag_mask = torch.tensor([[True, False, True, True, True]])  # position 1 is not tagged (a continuation piece)
    positions = [0, 2, 3, 4]
    paths = list(itertools.product(range(3), repeat=len(positions)))
    tags = torch.full((len(paths), 5), -100)
    tags[:, positions] = torch.tensor(paths)
    probabilities = model.tagger.sequence_probability(
        emissions.expand(len(paths), -1, -1), tags, tag_mask.expand(len(paths), -1)
    )
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)

    spans = torch.tensor([[0, 0, 3, 0, 1], [0, 2, 4, 0, 1], [0, 3, 5, 0, 1], [0, 4, 5, 0, 1]])
    for (_, start, end, begin, inside), probability in zip(
        spans.tolist(), model.tagger.entity_probabilities(emissions, tag_mask, spans), strict=True
    ):
        inner = [k for k, t in enumerate(positions) if start <= t < end]
        after = [k for k, t in enumerate(positions) if t >= end][:1]
        holds = [
            path[inner[0]] == begin
            and all(path[k] == inside for k in inner[1:])
            and not (after and path[after[0]] == inside)
            for path in paths
        ]
        assert probability.item() == pytest.approx(probabilities[torch.tensor(holds)].sum().item(), abs=1e-5)


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_a_reordered_label_set_tags_exactly_as_the_parent(tmp_path, tag_unit):
    """Carried over by name, a model whose labels come in another order is the same tagger."""
    from koelectra_crf import KoElectraCrfTokenClassificationPipeline

    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path)
    parent = tiny_model(tokenizer.vocab_size, tag_unit=tag_unit)
    with torch.no_grad():  # a random head that still predicts entities
        parent.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    child = parent.with_labels(list(reversed(KLUE_LABELS)))
    assert child.config.label_names == list(reversed(KLUE_LABELS)) and not child.training
    tagged = [KoElectraCrfTokenClassificationPipeline(model=m, tokenizer=tokenizer)(TINY_TEXT) for m in (parent, child)]
    assert tagged[0] and [e["entity"] for e in tagged[0]] == [e["entity"] for e in tagged[1]]
    assert [e["score"] for e in tagged[0]] == pytest.approx([e["score"] for e in tagged[1]], abs=1e-5)


def test_new_labels_keep_the_shared_rows_and_start_new_ones_fresh(tmp_path):
    torch.manual_seed(0)
    parent = tiny_model(character_tokenizer(tmp_path).vocab_size).train()
    labels = ["B-PRD", "I-PRD", "O", "B-PS", "I-PS"]
    before = {name: value.clone() for name, value in parent.state_dict().items()}
    child = parent.with_labels(labels)
    assert child.training and child.config.num_labels == 5 and child.config.tag_unit == parent.config.tag_unit
    for name, value in parent.state_dict().items():
        if not name.startswith(("classifier.", "crf.")):
            assert torch.equal(child.state_dict()[name], value), name
    old = [KLUE_LABELS.index(label) for label in labels[2:]]
    assert torch.equal(child.classifier.weight[2:], parent.classifier.weight[old])
    assert torch.equal(child.classifier.bias[2:], parent.classifier.bias[old])
    assert torch.equal(child.crf.start_transitions[2:], parent.crf.start_transitions[old])
    assert torch.equal(child.crf.end_transitions[2:], parent.crf.end_transitions[old])
    assert torch.equal(child.crf.transitions[2:, 2:], parent.crf.transitions[old][:, old])
    # New labels: initialised as a fresh model's (CRF scores uniform in [-0.1, 0.1]), not copies of any parent row.
    new_scores = torch.cat([child.crf.start_transitions[:2], child.crf.transitions[:2].flatten(),
                            child.crf.transitions[:, :2].flatten()])  # fmt: skip
    assert new_scores.abs().max() <= 0.1 and new_scores.std() > 0
    assert not any(torch.equal(child.classifier.weight[0], row) for row in parent.classifier.weight)
    # Constraints follow the new names: I-PRD may not follow O.
    assert not child.crf.allowed_transitions[labels.index("O"), labels.index("I-PRD")]
    assert all(torch.equal(value, before[name]) for name, value in parent.state_dict().items())  # parent unchanged
