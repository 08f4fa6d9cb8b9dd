"""The ONNX export and its onnxruntime model: the network as one ONNX graph, the CRF and the pipeline unchanged
around it.

`export_onnx` (the `koelectra-crf export` command) writes a folder:

- `model.onnx`: encoder + BiLSTM + emission layer, from int64 inputs of shape `(batch, length)` (and, with
  `tag_unit="character"`, `(batch, characters)`, `char_morphemes` among them with `morpheme_features`) to `logits`
  `(batch, length or characters, num_labels)` float32, batch and lengths dynamic; int8 weights with
  `quantize="int8"` (onnxruntime's dynamic quantization);
- `crf.safetensors`: the CRF's transition scores (absent for a model without CRF);
- `config.json` and the tokenizer: labels, windows (`max_length`, `stride`), `tag_unit`, `encoder_tokenization`;
- `onnx_export.json`: the graph's inputs, its quantization, the versions used, and the largest difference of its
  logits from PyTorch's on the export's sample. Its presence marks the folder as an export.

[`load_onnx_pipeline`] puts [`KoElectraCrfOnnxModel`] in place of the PyTorch model inside the unchanged
`KoElectraCrfTokenClassificationPipeline`: same windows, same stitching, same output format and aggregation
strategies. Loading needs torch, transformers and onnxruntime only (`pip install "koelectra-crf[serve]"`), not the
training dependencies.

Why the CRF stays outside the graph: the pipeline decodes a long text whole from the emissions of several windows,
so emissions, not tags, are what the graph must give; decoding with the tested `LinearChainCRF` (through the same
`tagger.EmissionTagger` as the PyTorch model) makes the tags and scores numerically those of the PyTorch model given
the same emissions (same constraint penalty, same tie-breaking); a Viterbi loop over a data-dependent length would
export as an ONNX Loop that runs node by node, for a small share of the time; and int8 quantization then never
touches the transition scores.
"""

import contextlib
import copy
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from koelectra_crf import registration  # noqa: F401  (AutoTokenizer reads the export's config.json, no remote code)
from koelectra_crf.alignment import encode_texts, pad_inputs
from koelectra_crf.configuration_koelectra_crf import KoElectraCrfConfig
from koelectra_crf.crf import LinearChainCRF
from koelectra_crf.modeling_koelectra_crf import KoElectraCrfForTokenClassification, KoElectraCrfOutput
from koelectra_crf.options import QUANTIZATIONS
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.tagger import EmissionTagger, build_crf, default_tag_mask
from koelectra_crf.usage import UsageError

ONNX_FILE = "model.onnx"
CRF_FILE = "crf.safetensors"
EXPORT_INFO_FILE = "onnx_export.json"
QUANTIZED_OPS = ["MatMul", "Gather", "LSTM"]  # the nodes with weights: linear layers, embeddings, the BiLSTM
ATTENTION_OPSET = 23
INSTALL_HINT = 'pip install "koelectra-crf[serve]" (onnx, onnxruntime, onnxscript)'
# Two texts of different lengths: a sample batch of one, or of equal lengths, would let torch.export fix a dimension.
# Short ones: the exporter's decompositions unroll the LSTM over the sample's length, most of the export's time.
SAMPLE_TEXTS = ["김철수는 서울에서", "이재용"]


class EmissionGraph(nn.Module):
    """What is exported: the emission scores of `model` in evaluation mode, from the window inputs the pipeline
    builds (`alignment.EncodedText.window`), as int64 tensors of shape `(batch, length)` (character inputs and,
    with `tag_unit="character"`, `tag_mask`: `(batch, characters)`), to `(batch, length or characters,
    num_labels)`.

    Equal to `model(**inputs).logits` in evaluation mode (no dropout, one sample) at every position the BiLSTM's
    mask marks. The one change is how the BiLSTM meets padding: the model packs its sequences
    (`pack_padded_sequence`, shapes that depend on the data, which `torch.export` cannot trace); here each
    direction is a one-directional LSTM with the BiLSTM's weights over the padded batch, the backward one on each
    row reversed within its length. The forward direction never sees the padding after a row's end and the
    backward one starts at its last real position, as with packing; padded positions are zero before the emission
    layer, as `pad_packed_sequence` leaves them.
    """

    def __init__(self, model: KoElectraCrfForTokenClassification):
        super().__init__()
        self.model = model
        self.forward_lstm = self.backward_lstm = None
        if model.bilstm is not None:
            self.forward_lstm, self.backward_lstm = (
                nn.LSTM(model.bilstm.input_size, model.bilstm.hidden_size, batch_first=True) for _ in range(2)
            )
            weights = model.bilstm.state_dict()
            self.forward_lstm.load_state_dict({name: weights[name] for name in self.forward_lstm.state_dict()})
            self.backward_lstm.load_state_dict(
                {name: weights[f"{name}_reverse"] for name in self.backward_lstm.state_dict()}
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        tag_mask: torch.Tensor | None = None,
        char_token_index: torch.Tensor | None = None,
        char_position_ids: torch.Tensor | None = None,
        char_codes: torch.Tensor | None = None,
        char_morphemes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        states = self.model.encoder(**encoder_inputs, return_dict=True).last_hidden_state
        mask = attention_mask
        if self.model.characters is not None:  # as in the model's forward: the sequence is the characters
            states = self.model.characters(states, char_token_index, char_position_ids, char_codes, char_morphemes)
            mask = tag_mask
        if self.forward_lstm is not None:
            lengths = mask.sum(-1)
            backward = _reverse_within(self.backward_lstm(_reverse_within(states, lengths))[0], lengths)
            states = torch.cat([self.forward_lstm(states)[0], backward], dim=-1) * mask.unsqueeze(-1).to(states.dtype)
        return self.model.classifier(states)


def _reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`x` (B, T, H) with the first `lengths[b]` positions of each row b in reverse order, the rest in place."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    last = lengths.unsqueeze(1) - 1
    index = torch.where(steps <= last, last - steps, steps)
    # Advanced indexing rather than `gather` with an index expanded to x's shape: the exporter gives the LSTM's
    # output a fixed length, and an `Expand` to that shape fails on any other length.
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), index]


def sample_inputs(
    model: KoElectraCrfForTokenClassification, tokenizer: PreTrainedTokenizerBase
) -> dict[str, torch.Tensor]:
    """A padded batch of two windows, as the pipeline builds and pads them: the graph's inputs, by name."""
    config = model.config
    windows = []
    for encoded in encode_texts(SAMPLE_TEXTS, tokenizer, config.encoder_tokenization, config.morpheme_features):
        start, end = encoded.windows(config.max_length, config.stride)[0]
        windows.append(encoded.window(start, end, config.tag_unit))
    inputs = pad_inputs(windows, tokenizer.pad_token_id)
    if config.tag_unit == "token":  # positions to decode: the graph does not need them (the BiLSTM reads the mask)
        del inputs["tag_mask"]
    # The graph takes every input as int64, as `KoElectraCrfOnnxModel.forward` feeds them (`tag_mask` too).
    return {name: tensor.long() for name, tensor in inputs.items()}


def export_onnx(
    model: KoElectraCrfForTokenClassification,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    quantize: str | None = None,
) -> Path:
    """Write an ONNX export folder of `model` (see the module docstring) and return its path.

    The model is exported in float32 evaluation mode (a copy when it is in another dtype or in training mode).
    `quantize="int8"` stores int8 weights (`onnxruntime.quantization.quantize_dynamic`: weights quantized once,
    activations at run time), smaller and usually faster on CPU, at some accuracy, except the encoder's
    feed-forward output projections ([`feed_forward_outputs`]); `"int8-full"` quantizes those too, faster and
    less accurate (docs/performance.md, benchmarks/onnx_speed.py).

    `output_dir` must be new, empty, or an earlier export (which is replaced); anything else is refused.
    """
    try:
        import onnx
        import onnxruntime  # checked here: the export is verified with it
    except ImportError as error:
        raise ImportError(f"ONNX export needs {INSTALL_HINT}") from error
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}")
    output_dir = Path(output_dir)
    check_export_folder(output_dir)
    if model.training or any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = sample_inputs(model, tokenizer)
    with tempfile.TemporaryDirectory() as work:
        exported = _export_graph(model, inputs, Path(work))
        if quantize is None:
            (output_dir / ONNX_FILE).write_bytes(exported.read_bytes())
        else:
            _quantize_graph(exported, output_dir / ONNX_FILE, quantize, model, Path(work))
    _save_beside_graph(model, tokenizer, output_dir)
    info = {
        "inputs": list(inputs),
        "output": "logits",
        "quantize": quantize,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    _write_export_info(output_dir, info)  # before the check: its presence is what makes the folder loadable
    info["sample_max_abs_difference"] = difference = _largest_difference_from_pytorch(model, inputs, output_dir)
    _write_export_info(output_dir, info)
    if quantize is None and difference > 1e-3:
        raise RuntimeError(f"the exported graph's logits differ from PyTorch's by {difference:.3g} on the sample")
    return output_dir


def _dynamic_shapes(inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, torch.export.Dim]]:
    """The graph's dynamic axes: batch for every input, then the characters for the character inputs and the
    length (tokens) for the others, so that a window of any size runs on the one graph."""
    axes = {"batch": torch.export.Dim("batch"), "length": torch.export.Dim("length")}
    axes["characters"] = torch.export.Dim("characters")
    character_inputs = {"tag_mask", "char_token_index", "char_position_ids", "char_codes", "char_morphemes"}
    return {name: {0: axes["batch"], 1: axes["characters" if name in character_inputs else "length"]}
            for name in inputs}  # fmt: skip


def _export_graph(model: KoElectraCrfForTokenClassification, inputs: dict[str, torch.Tensor], work: Path) -> Path:
    """Export `model`'s `EmissionGraph` from the sample `inputs` into `work` and return the float32 graph's path,
    its output axes named (`_declare_output_shape`)."""
    import onnx

    exported = work / ONNX_FILE
    _forget_lstm_kernels()
    with _exporters_notes_silenced():
        torch.onnx.export(
            EmissionGraph(model).eval(),
            (),
            exported,
            kwargs=inputs,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(inputs),
            dynamo=True,
            external_data=False,
            # Opset 23 has `Attention`: the encoder's scaled-dot-product attention becomes one node that
            # onnxruntime (>= 1.23) runs as one kernel, instead of a dozen nodes with guards against masked rows.
            opset_version=ATTENTION_OPSET,
        )
    graph = onnx.load(exported)
    _declare_output_shape(graph, "characters" if model.config.tag_unit == "character" else "length")
    onnx.save(graph, exported)
    return exported


def _quantize_graph(
    exported: Path, target: Path, quantize: str, model: KoElectraCrfForTokenClassification, work: Path
) -> None:
    """Write the graph `exported` to `target` with int8 weights (`quantize`, see [`export_onnx`]), preparing it in
    `work` first as onnxruntime's quantizer asks."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    quant_pre_process(exported, prepared, skip_symbolic_shape=True)
    kept_float = [] if quantize == "int8-full" else feed_forward_outputs(onnx.load(prepared), model)
    # Weights per output channel (one scale per column keeps small columns apart from large ones). The op
    # types are named because the quantizer reads ONNX's `Attention` as onnxruntime's own contrib op and
    # writes an invalid graph; attention's products are of activations, not weights, anyway.
    quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=kept_float)  # fmt: skip


def _save_beside_graph(
    model: KoElectraCrfForTokenClassification, tokenizer: PreTrainedTokenizerBase, output_dir: Path
) -> None:
    """What the pipeline needs besides the graph: the CRF's transition scores (decoding stays outside the graph,
    see the module docstring), the config and the tokenizer."""
    if model.crf is not None:
        save_file({name: value.detach().contiguous() for name, value in model.crf.state_dict().items()},
                  output_dir / CRF_FILE)  # fmt: skip
    model.config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def _write_export_info(output_dir: Path, info: dict) -> None:
    """Write `info` as the folder's `onnx_export.json` (see the module docstring)."""
    (output_dir / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _largest_difference_from_pytorch(
    model: KoElectraCrfForTokenClassification, inputs: dict[str, torch.Tensor], output_dir: Path
) -> float:
    """The largest absolute difference between the logits of the export in `output_dir` (through onnxruntime) and
    `model`'s on the sample `inputs`, at the positions that are tagged: what shows that the export computes the
    model (and how far int8 weights move it)."""
    with torch.no_grad():
        expected = model(**inputs).logits
        logits = KoElectraCrfOnnxModel.from_pretrained(output_dir)(**inputs).logits
    mask = inputs.get("tag_mask", inputs["attention_mask"]).bool()
    return (logits - expected)[mask].abs().max().item()


# What torch's exporter says on every export of this model that a user can do nothing about: its own deprecations,
# the LSTM weights it reads as attributes, axes named twice because they share a size, torchvision's absence (it
# registers torchvision's ops when it can), and its progress lines.
EXPORTER_NOTES = (
    r"_check_is_size will be removed",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The tensor attributes .*_flat_weights.* were assigned during export",
    r"# The axis name: \w+ will not be used",
)


@contextmanager
def _exporters_notes_silenced() -> Iterator[None]:
    """Within the block, the warnings of `EXPORTER_NOTES` and torch.onnx's info logging are not shown; every other
    warning is."""
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            for note in EXPORTER_NOTES:
                warnings.filterwarnings("ignore", message=note)
            yield
    finally:
        registry_logger.setLevel(level)


def feed_forward_outputs(graph, model: KoElectraCrfForTokenClassification) -> list[str]:
    """The `MatMul` nodes of `graph` whose weight is an encoder feed-forward output projection, (intermediate size,
    hidden size) as the exporter stores it; none when the encoder's config names no such sizes.

    `quantize="int8"` keeps these in float32. They read the GELU's output, whose few large values make the one
    int8 scale of each activation tensor too coarse for the many small ones: on the trained character-head model
    of docs/performance.md, quantizing every weight (`"int8-full"`) lost 1.09 entity F1, keeping these 0.20, at
    about a third of the encoder's matrix products left in float32.
    """
    encoder_config = model.encoder.config
    shape = [getattr(encoder_config, "intermediate_size", None), getattr(encoder_config, "hidden_size", None)]
    weights = {initializer.name for initializer in graph.graph.initializer if list(initializer.dims) == shape}
    return [node.name for node in graph.graph.node if node.op_type == "MatMul" and weights & set(node.input)]


def _forget_lstm_kernels() -> None:
    """Clear the kernels torch has cached for `aten.lstm` (torch 2.13).

    After a first export in the process, the kernel cached then makes the next `torch.export` trace the LSTM's
    Python decomposition, a loop over time steps, which fixes the graph's length to the sample's; without it the
    exporter keeps `aten.lstm` whole and the length dynamic (tests/test_serving.py exports several times).
    """
    for overload in (torch.ops.aten.lstm.input, torch.ops.aten.lstm.data):
        getattr(overload, "_dispatch_cache", {}).clear()


def _declare_output_shape(graph, length_axis: str) -> None:
    """Name the output's axes (batch, length, labels) and drop the intermediate shapes the exporter recorded: it
    gives the LSTM's output the sample's length, which onnxruntime would otherwise warn about on every other
    length (the computation itself is not affected)."""
    del graph.graph.value_info[:]
    batch, length, _ = graph.graph.output[0].type.tensor_type.shape.dim
    batch.dim_param, length.dim_param = "batch", length_axis


def check_export_folder(output_dir: Path) -> None:
    """A `UsageError` unless `output_dir` is new, empty, or an earlier export: an export writes config.json and the
    tokenizer, which would replace a model folder's own."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not is_onnx_folder(output_dir):
        raise UsageError(
            f"--output {output_dir} is not empty and holds no earlier export: an export writes config.json and the "
            "tokenizer, which would replace a model folder's own; choose a new or empty folder"
        )


def is_onnx_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by [`export_onnx`] (a Hub id or a PyTorch model folder is not)."""
    return Path(path, EXPORT_INFO_FILE).is_file()


class KoElectraCrfOnnxModel(nn.Module):
    """Stands in for [`KoElectraCrfForTokenClassification`] inside `KoElectraCrfTokenClassificationPipeline`: the
    emissions come from onnxruntime, tags and probabilities from the same [`EmissionTagger`] as the PyTorch model's,
    over a `LinearChainCRF` with the exported transition scores.

    What the pipeline uses of a model: `config`, `device`, `tagger`, and a call with the window inputs returning
    `logits` (B, T, K) and, when asked (`return_predictions`), `predictions` (B, T). Runs on the CPU (onnxruntime's
    CPU provider).
    """

    def __init__(self, session, config: KoElectraCrfConfig, crf: LinearChainCRF | None):
        super().__init__()
        self.session = session
        self.config = config
        self.crf = crf
        self.tagger = EmissionTagger(crf)
        self.input_names = [graph_input.name for graph_input in session.get_inputs()]
        # The device the pipeline reads (`device`): `.to()` moves this buffer along with the CRF.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, num_threads: int | None = None) -> "KoElectraCrfOnnxModel":
        """Load an export folder. `num_threads`: onnxruntime's intra-op threads (default: torch's, which follow
        `OMP_NUM_THREADS` and the command line's choice, so that both runtimes get the same cores)."""
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(f"running an ONNX export needs {INSTALL_HINT}") from error
        folder = Path(folder)
        if not is_onnx_folder(folder):
            raise ValueError(
                f"{folder} is not an ONNX export folder (no {EXPORT_INFO_FILE}): see `koelectra-crf export`"
            )
        config = KoElectraCrfConfig.from_pretrained(folder)
        crf = build_crf(config)
        if crf is not None:
            crf.load_state_dict(load_file(folder / CRF_FILE))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(folder / ONNX_FILE, options, providers=["CPUExecutionProvider"])
        return cls(session, config, crf).eval()

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def forward(
        self, tag_mask: torch.Tensor | None = None, return_predictions: bool | None = None, **inputs: torch.Tensor
    ) -> KoElectraCrfOutput:
        """`logits` (B, T, K) of the window inputs (as for the PyTorch model; extra inputs such as `labels` are
        ignored), and `predictions` (B, T), -100 where `tag_mask` is False, when `return_predictions` (default: in
        evaluation mode). `tag_mask` defaults as in the PyTorch model (`tagger.default_tag_mask`)."""
        if tag_mask is None:
            positions = inputs["char_codes" if self.config.tag_unit == "character" else "attention_mask"]
            tag_mask = default_tag_mask(self.config, positions, attention_mask=inputs["attention_mask"])
        tag_mask = tag_mask.bool()
        inputs["tag_mask"] = tag_mask
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"the ONNX graph needs the inputs {missing}")
        feed = {name: inputs[name].detach().cpu().numpy().astype(np.int64) for name in self.input_names}
        logits = torch.from_numpy(self.session.run(["logits"], feed)[0]).to(self.device)
        if return_predictions is None:
            return_predictions = not self.training
        predictions = self.tagger.decode(logits, tag_mask.to(self.device)) if return_predictions else None
        return KoElectraCrfOutput(logits=logits, predictions=predictions)


def load_onnx_pipeline(
    folder: str | Path, num_threads: int | None = None, **pipeline_kwargs
) -> KoElectraCrfTokenClassificationPipeline:
    """The CRF pipeline over an ONNX export folder (on the CPU): same arguments and output as over the PyTorch
    model. `pipeline_kwargs` (e.g. `respace=True`) become its defaults for every call."""
    return KoElectraCrfTokenClassificationPipeline(
        model=KoElectraCrfOnnxModel.from_pretrained(folder, num_threads),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        device="cpu",
        **pipeline_kwargs,
    )
