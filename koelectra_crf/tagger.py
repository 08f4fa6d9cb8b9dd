"""From emission scores to tags, probabilities and the training loss: the one owner of that step (remote code).

An [`EmissionTagger`] is built once from a model's config. The PyTorch model is encoder + head + its tagger; the ONNX
model (`koelectra_crf.onnx_model`) is an onnxruntime session + a tagger over the exported CRF scores; the pipeline,
calibration and every later decoding feature ask the model's `tagger`. With a CRF (`config.use_crf`) the tags of a
sequence are scored together (`LinearChainCRF`); without one each position's tag is an independent softmax.

Constraints on the tags (`allowed_tags`, (B, T, K) bool: the tags each position may take, e.g. B-OG then I-OG over
a span a user fixed, O over a code span) restrict the lattice the CRF sums and maximises over: the forbidden tags'
emission scores get -inf (decoding, the k best) or `CONSTRAINT_PENALTY` (probabilities, whose log Z is then the sum over
the allowed sequences only, so every probability is conditioned on the constraints). Decoding under them is exact
Viterbi on that lattice.
"""

import torch
from torch import nn

from .crf import CONSTRAINT_PENALTY, IGNORE_INDEX, LinearChainCRF, bio_constraints


def tag_constraints(config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The BIO constraints of the config's label set (`crf.bio_constraints`): allowed first tags, transitions and
    last tags."""
    return bio_constraints(config.label_names)


def build_crf(config) -> LinearChainCRF | None:
    """The CRF a model of `config` decodes with, its constraints from the label names; None with `use_crf=False`."""
    if not config.use_crf:
        return None
    return LinearChainCRF(config.num_labels, *tag_constraints(config), config.crf_constrain_training)


def default_tag_mask(
    config,
    positions: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.BoolTensor:
    """The positions to tag (B, T) when the inputs name none, for a tagged sequence shaped as `positions` (B, T, ...):
    where `labels` are not -100; else, with token units, the attention mask; else every position (every character
    of the window, with `tag_unit="character"`)."""
    if labels is not None:
        return labels != IGNORE_INDEX
    if attention_mask is not None and config.tag_unit == "token":
        return attention_mask.bool()
    return torch.ones(positions.shape[:2], dtype=torch.bool, device=positions.device)


def constrained(emissions: torch.Tensor, allowed_tags: torch.Tensor, penalty: float) -> torch.Tensor:
    """Float32 `emissions` (B, T, K) with `penalty` added to the tags that `allowed_tags` (B, T, K) forbids."""
    if allowed_tags.shape != emissions.shape:
        raise ValueError(f"allowed_tags must have shape {tuple(emissions.shape)}, got {tuple(allowed_tags.shape)}")
    return emissions.float() + torch.where(allowed_tags.bool(), 0.0, penalty)


class EmissionTagger:
    """Tags, probabilities and loss from emission scores (B, T, K) over the positions a `tag_mask` (B, T) marks.

    Attributes:
        crf (`LinearChainCRF` or None): the model's CRF (its module: moved and saved with the model), None for a
            softmax head.
        temperature (`float`): the emission scores are divided by it before tags and probabilities are computed
            (temperature scaling, fitted by `koelectra-crf calibration`); 1 leaves them as trained. The training loss
            ignores it.
    """

    def __init__(self, crf: LinearChainCRF | None, temperature: float = 1.0):
        self.crf = crf
        self.temperature = temperature

    def _scaled(
        self, emissions: torch.Tensor, allowed_tags: torch.Tensor | None = None, penalty: float = CONSTRAINT_PENALTY
    ) -> torch.Tensor:
        """The emissions over the temperature, `penalty` added to the scores of the tags `allowed_tags` forbids."""
        emissions = emissions if self.temperature == 1.0 else emissions / self.temperature
        return emissions if allowed_tags is None else constrained(emissions, allowed_tags, penalty)

    def loss(self, emissions: torch.Tensor, labels: torch.Tensor, tag_mask: torch.Tensor) -> torch.Tensor:
        """The training loss, shape (): the mean over sequences of the CRF negative log-likelihood, or without a
        CRF the cross-entropy per labelled position."""
        if self.crf is not None:
            return -self.crf.log_likelihood(emissions, labels, tag_mask).mean()
        return nn.functional.cross_entropy(emissions.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    def decode(
        self, emissions: torch.Tensor, tag_mask: torch.Tensor, allowed_tags: torch.Tensor | None = None
    ) -> torch.LongTensor:
        """Best tags (B, T): Viterbi with the CRF, argmax without; -100 where `tag_mask` is False. Under
        `allowed_tags` (B, T, K), the best allowed tags (`k_best` also says whether there are any)."""
        emissions = self._scaled(emissions, allowed_tags, float("-inf"))
        if self.crf is not None:
            return self.crf.decode(emissions, tag_mask)
        return emissions.argmax(-1).masked_fill(~tag_mask, IGNORE_INDEX)

    def k_best(
        self, emissions: torch.Tensor, tag_mask: torch.Tensor, k: int, allowed_tags: torch.Tensor | None = None
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """The k most probable tag sequences (B, k, T), best first (-100 where `tag_mask` is False), and their
        probabilities P(tags | text) (B, k), conditioned on `allowed_tags` (B, T, K) if given
        (`LinearChainCRF.k_best`: exact k-best Viterbi). Without a CRF the tags are independent, which is a CRF with
        all start, transition and end scores 0 over the log-softmax. A row with fewer than k allowed sequences fills
        the rest with tags -100 everywhere and probability 0 (a sequence that exists may also have probability 0:
        below float32's smallest number, as on a long text).

        Raises:
            ValueError: when `allowed_tags` leave a row no tag sequence at all (contradictory constraints).
        """
        emissions = self._scaled(emissions)
        crf = self.crf
        if crf is None:
            # Independent tags: a CRF whose start, transition and end scores are all 0, over the log-softmax.
            crf = LinearChainCRF(emissions.size(-1)).to(emissions.device)
            with torch.no_grad():
                for parameter in crf.parameters():
                    parameter.zero_()
            emissions = emissions.float().log_softmax(-1)
        if allowed_tags is not None:
            emissions = constrained(emissions, allowed_tags, float("-inf"))
        tags, log_probabilities = crf.k_best(emissions, tag_mask, k)
        if not torch.isfinite(log_probabilities[:, 0]).all():
            raise ValueError("the constraints allow no tag sequence: they contradict each other or the BIO scheme")
        return tags.masked_fill(log_probabilities.isneginf().unsqueeze(-1), IGNORE_INDEX), log_probabilities.exp()

    def tag_probabilities(
        self, emissions: torch.Tensor, tag_mask: torch.Tensor, allowed_tags: torch.Tensor | None = None
    ) -> torch.Tensor:
        """P(tag_t = k | text), shape (B, T, K): CRF marginals, or the softmax without a CRF; 0 where untagged.
        Conditioned on `allowed_tags` (B, T, K) if given."""
        emissions = self._scaled(emissions, allowed_tags)
        if self.crf is not None:
            return self.crf.marginals(emissions, tag_mask)
        return emissions.float().softmax(-1) * tag_mask.unsqueeze(-1)

    def entity_probabilities(
        self,
        emissions: torch.Tensor,
        tag_mask: torch.Tensor,
        spans: torch.Tensor,
        allowed_tags: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """P(the tags hold exactly a given entity | text), shape (N,), for `spans` (N, 5) of (row, start, end
        exclusive, B-X id, I-X id) in positions of the tagged sequence: B-X at its first tagged position, I-X
        through its last, and no I-X at the next tagged position. With a CRF, its exact value
        (`LinearChainCRF.entity_probabilities`); without, where the tags are independent, the product of those
        softmax probabilities. Conditioned on `allowed_tags` (B, T, K) if given."""
        emissions = self._scaled(emissions, allowed_tags)
        if self.crf is not None:
            return self.crf.entity_probabilities(emissions, tag_mask, spans)
        probabilities = emissions.float().softmax(-1)
        result = []
        for row, start, end, begin, inside in spans.tolist():
            positions = tag_mask[row].nonzero().flatten().tolist()
            inner = [t for t in positions if start <= t < end]
            after = [t for t in positions if t >= end][:1]
            tags = [begin] + [inside] * (len(inner) - 1)
            p = torch.prod(probabilities[row, inner, tags]) if inner else probabilities.new_tensor(0.0)
            result.append(p * (1 - probabilities[row, after[0], inside]) if after else p)
        return torch.stack(result) if result else probabilities.new_zeros(0)

    def sequence_probability(
        self,
        emissions: torch.Tensor,
        tags: torch.Tensor,
        tag_mask: torch.Tensor,
        allowed_tags: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """P(tags | text), shape (B,), of tag sequences (B, T) such as the decoded ones: exp(score) / Z with a CRF,
        the product of the softmax probabilities of the tags without one. Conditioned on `allowed_tags` (B, T, K)
        if given."""
        emissions = self._scaled(emissions, allowed_tags)
        if self.crf is not None:
            return self.crf.sequence_probability(emissions, tags, tag_mask)
        chosen = emissions.float().log_softmax(-1).gather(-1, tags.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (chosen * tag_mask).sum(-1).exp()
