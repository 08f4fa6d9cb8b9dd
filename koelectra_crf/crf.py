"""A linear-chain conditional random field (CRF) for sequence labelling.

This file imports only ``torch`` and the Python standard library, so it can be shipped to the Hugging Face
Hub as remote code next to a model's weights.

Notation used in the docstrings and comments below:

* ``B`` batch size, ``T`` padded sequence length, ``K`` number of tags.
* ``e[t, k]``: the emission score of tag ``k`` at position ``t`` (the encoder's output), shape ``(B, T, K)``.
* ``s[k]``, ``A[i, j]``, ``f[k]``: the start, transition (from tag ``i`` to tag ``j``) and end scores, the
  module's three parameters. ``A[i, j]`` follows pytorch-crf's convention, so its parameters copy in as-is.
* ``y = (y_0, ..., y_{n-1})``: a tag sequence of length ``n``, the number of unmasked positions of a row.

The score of a tag sequence is::

    score(y) = s[y_0] + sum_{t=0}^{n-1} e[t, y_t] + sum_{t=1}^{n-1} A[y_{t-1}, y_t] + f[y_{n-1}]

and the CRF is the distribution ``p(y | x) = exp(score(y)) / Z`` with the partition function
``Z = sum_y' exp(score(y'))``, a sum over all ``K^n`` tag sequences that dynamic programming computes in
``O(n K^2)``.

Masks. A mask may be any boolean pattern, not only a left-aligned one: the chain links consecutive unmasked
positions in order and masked positions are skipped entirely. Every method first moves the unmasked
positions of each row to its front, keeping their order (a stable sort of the mask, then a ``gather``), runs
the left-aligned algorithm, and scatters the per-position results back. A row without unmasked positions is
a sequence of length 0: its log-likelihood and log-partition are 0, it decodes to ``-100`` everywhere and its
marginals are all 0.

Constraints. Allowed start tags, transitions and end tags (e.g. from :func:`bio_constraints`) are applied by
adding :data:`CONSTRAINT_PENALTY` to the scores of disallowed moves: a large but finite number, so that
gradients stay finite. :meth:`LinearChainCRF.decode` instead adds ``-inf``, so it can never return a
disallowed path. Constraints always apply to ``decode``, ``marginals``, ``sequence_probability`` and
``entity_probabilities``; they apply to ``log_likelihood`` and ``log_partition`` only with
``constrain_training=True``.

Implementations. The reference algorithms are loops over time that read as the recursions in their docstrings:
the forward algorithm (:func:`_forward`), which gives ``log Z`` (:func:`_log_partition`, differentiated by
autograd); Viterbi (:func:`_viterbi`), whose back-pointers :func:`_best_paths` follows back from the best last tag;
and the forward-backward algorithm (:meth:`LinearChainCRF._forward_backward`: the forward algorithm run forwards and
on the reversed chain), the one source of :meth:`~LinearChainCRF.marginals` and
:meth:`~LinearChainCRF.entity_probabilities`. On a GPU each step of a loop is a separate kernel launch, and 128 of
them cost more than the encoder, so there the same quantities come from O(log T) sequential steps: parallel variants
that multiply the per-step transition matrices pairwise in the log semiring (:func:`_forward_parallel`,
:func:`_log_partition_parallel`) or in the max-plus semiring (:func:`_viterbi_parallel`). One selector,
:meth:`LinearChainCRF._algorithms`, picks the set as the constructor argument ``implementation`` (kept as the
attribute :attr:`LinearChainCRF.implementation`) says: ``"auto"`` (the default: the reference on CPU, the parallel
variants on any other device), ``"sequential"`` (the reference) or ``"parallel"``. The tests hold both sets to
brute-force enumeration and pytorch-crf, and the parallel variants to the reference functions. The k best sequences
(:meth:`~LinearChainCRF.k_best`, :func:`_k_best_viterbi`: Viterbi keeping k prefixes per tag) have the loop only.

All computation happens in float32, with autocast disabled, whatever the dtype of the emissions or the
parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["CONSTRAINT_PENALTY", "LinearChainCRF", "bio_constraints"]

#: Added to the score of every disallowed start tag, transition and end tag when constraints apply (not in
#: ``decode``, which uses ``-inf``). ``exp(-1e4)`` is exactly 0 in float32, so a disallowed path carries no
#: probability mass, while gradients through the log-sum-exps stay finite.
CONSTRAINT_PENALTY = -1e4

#: Label of positions without a tag (masked positions) in ``decode``'s output, as in Hugging Face's losses.
IGNORE_INDEX = -100

# "log 0" for the off-diagonal entries of the log-semiring identity matrix. Finite, so that products of
# identity matrices (padding in the parallel algorithms) never compute ``-inf - -inf`` in the backward pass.
_LOG_ZERO = -1e30

#: The choices of ``LinearChainCRF(implementation=...)``; see the module docstring.
IMPLEMENTATIONS = ("auto", "sequential", "parallel")

#: The "sum" of a semiring over one dimension: ``torch.logsumexp`` (log semiring) or ``torch.amax`` (max-plus).
Reduce = Callable[..., Tensor]


class _Algorithms(NamedTuple):
    """One set of the three recursions, as :meth:`LinearChainCRF._algorithms` selects it; each takes left-aligned
    emissions (see the "reference algorithms" below for the arguments)."""

    name: str  # "sequential" (the reference loops) or "parallel"
    forward: Callable[..., Tensor]  # alpha (B, T, K)
    log_partition: Callable[..., Tensor]  # log Z (B,)
    viterbi: Callable[..., Tensor]  # best tags (B, T)


def bio_constraints(labels: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """The BIO constraints for a list of label names, in any order.

    Labels are ``"O"``, ``"B-X"`` or ``"I-X"`` for entity types ``X`` (any names, which may contain ``-``). An
    ``I-X`` tag continues an entity of type ``X``, so it may not start a sequence, may not follow ``O``, and may
    not follow ``B-Y`` or ``I-Y`` with ``Y != X``. Everything else is allowed; every tag may end a sequence.

    Args:
        labels: the label name of each tag id, length ``K``.

    Returns:
        ``(allowed_start, allowed_transitions, allowed_end)``, bool tensors of shapes ``(K,)``, ``(K, K)`` and
        ``(K,)``; ``allowed_transitions[i, j]`` tells whether tag ``j`` may follow tag ``i``.

    Raises:
        ValueError: for a label that is not ``O``, ``B-X`` or ``I-X``.
    """
    parsed = []  # (prefix, entity type) per tag, e.g. ("I", "PS"); ("O", "") for O
    for label in labels:
        prefix, _, entity = label.partition("-")
        if label == "O":
            parsed.append(("O", ""))
        elif prefix in ("B", "I") and entity:
            parsed.append((prefix, entity))
        else:
            raise ValueError(f"expected a label 'O', 'B-<type>' or 'I-<type>', got {label!r}")

    def may_follow(previous: tuple[str, str], current: tuple[str, str]) -> bool:
        # I-X continues an entity of type X: the previous tag must be B-X or I-X.
        return current[0] != "I" or (previous[0] != "O" and previous[1] == current[1])

    allowed_start = torch.tensor([prefix != "I" for prefix, _ in parsed], dtype=torch.bool)
    allowed_transitions = torch.tensor(
        [[may_follow(previous, current) for current in parsed] for previous in parsed], dtype=torch.bool
    ).reshape(len(parsed), len(parsed))
    allowed_end = torch.ones(len(parsed), dtype=torch.bool)
    return allowed_start, allowed_transitions, allowed_end


class LinearChainCRF(nn.Module):
    """A linear-chain CRF layer on top of per-position emission scores.

    Args:
        num_tags: number of tags ``K``.
        allowed_start: optional bool ``(K,)``, the tags a sequence may start with.
        allowed_transitions: optional bool ``(K, K)``; ``[i, j]`` tells whether tag ``j`` may follow tag ``i``.
        allowed_end: optional bool ``(K,)``, the tags a sequence may end with.
        constrain_training: apply the constraints in :meth:`log_likelihood` and :meth:`log_partition` too
            (they always apply in :meth:`decode` and :meth:`marginals`).
        implementation: ``"auto"`` (the reference loops over time on CPU, the parallel variants on any other
            device), ``"sequential"`` (the reference) or ``"parallel"``; see the module docstring. Kept as the
            attribute :attr:`implementation`, which may be reassigned (and is validated again).

    Parameters (the only entries of the ``state_dict``; the constraints are non-persistent buffers):
        start_transitions ``(K,)``, end_transitions ``(K,)`` and transitions ``(K, K)``, where
        ``transitions[i, j]`` is the score of moving from tag ``i`` to tag ``j``, as in pytorch-crf.

    Inputs of every method: ``emissions`` ``(B, T, K)`` of any float dtype; ``mask`` ``(B, T)`` bool, any
    pattern (``None``: all positions); ``tags`` ``(B, T)`` long, whose values at masked positions are ignored
    (``-100`` is fine).
    """

    def __init__(
        self,
        num_tags: int,
        allowed_start: Tensor | None = None,
        allowed_transitions: Tensor | None = None,
        allowed_end: Tensor | None = None,
        constrain_training: bool = False,
        *,
        implementation: str = "auto",
    ) -> None:
        if num_tags <= 0:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.constrain_training = constrain_training
        self.implementation = implementation  # validated by the property's setter
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        for name, allowed, shape in (
            ("allowed_start", allowed_start, (num_tags,)),
            ("allowed_transitions", allowed_transitions, (num_tags, num_tags)),
            ("allowed_end", allowed_end, (num_tags,)),
        ):
            if allowed is not None:
                allowed = torch.as_tensor(allowed, dtype=torch.bool)
                if allowed.shape != shape:
                    raise ValueError(f"{name} must have shape {shape}, got {tuple(allowed.shape)}")
            self.register_buffer(name, allowed, persistent=False)
        self.reset_parameters()

    @property
    def implementation(self) -> str:
        """``"auto"``, ``"sequential"`` or ``"parallel"``: which algorithms run (see the module docstring)."""
        return self._implementation

    @implementation.setter
    def implementation(self, implementation: str) -> None:
        if implementation not in IMPLEMENTATIONS:
            choices = ", ".join(repr(choice) for choice in IMPLEMENTATIONS)
            raise ValueError(f"implementation must be one of {choices}, got {implementation!r}")
        self._implementation = implementation

    def reset_parameters(self) -> None:
        """Draw all scores from ``uniform(-0.1, 0.1)``, as pytorch-crf does: at construction, and from the model's
        ``_init_weights`` for a checkpoint without them."""
        for parameter in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(parameter, -0.1, 0.1)

    def extra_repr(self) -> str:
        constrained = any(m is not None for m in (self.allowed_start, self.allowed_transitions, self.allowed_end))
        return (
            f"num_tags={self.num_tags}, constrained={constrained}, constrain_training={self.constrain_training}, "
            f"implementation={self.implementation!r}"
        )

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_likelihood`."""
        return self.log_likelihood(emissions, tags, mask)

    # ------------------------------------------------------------------------------------------------------
    # Public API

    def log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-likelihood ``log p(tags | x) = score(tags) - log Z`` of each sequence.

        Args:
            emissions: ``(B, T, K)`` float.
            tags: ``(B, T)`` long; values at masked positions are ignored.
            mask: ``(B, T)`` bool or ``None``.

        Returns:
            ``(B,)`` float32; 0 for a row without unmasked positions. Differentiable; minimise ``-ll.mean()``.
        """
        return self._log_likelihood(emissions, tags, mask, self.constrain_training)

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log partition function ``log Z = log sum_y exp(score(y))`` of each sequence.

        Args:
            emissions: ``(B, T, K)`` float.
            mask: ``(B, T)`` bool or ``None``.

        Returns:
            ``(B,)`` float32; 0 for a row without unmasked positions.
        """
        mask = self._check(emissions, mask)
        if emissions.size(1) == 0:
            return emissions.float().sum(dim=(1, 2))
        with _autocast_disabled(emissions.device):
            em, _, lengths, _ = _left_align(emissions, mask)
            return self._log_z(em, lengths, *self._scores(self.constrain_training))

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Most likely tag sequence ``argmax_y score(y)`` of each row (Viterbi), respecting the constraints.

        Args:
            emissions: ``(B, T, K)`` float.
            mask: ``(B, T)`` bool or ``None``.

        Returns:
            ``(B, T)`` long: the best tags at unmasked positions, ``-100`` at masked ones.
        """
        mask = self._check(emissions, mask)
        batch_size, length, _ = emissions.shape
        if length == 0:
            return torch.full((batch_size, 0), IGNORE_INDEX, dtype=torch.long, device=emissions.device)
        with _autocast_disabled(emissions.device):
            em, mask_c, lengths, order = _left_align(emissions, mask)
            start, transitions, end = self._scores(constrained=True, penalty=float("-inf"))
            best = self._algorithms(em.device).viterbi(em, lengths, start, transitions, end)
            best = best.masked_fill(~mask_c, IGNORE_INDEX)
            return torch.empty_like(best).scatter_(1, order, best)

    @torch.no_grad()
    def k_best(self, emissions: Tensor, mask: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` most likely tag sequences of each row and their log-probabilities (exact k-best Viterbi,
        :func:`_k_best_viterbi`), respecting the constraints.

        ``log P(y | x) = score(y) - log Z``, both under the constraints, as :meth:`sequence_probability` sees them
        (``log Z`` with :data:`CONSTRAINT_PENALTY`, the paths with ``-inf`` on disallowed moves, as in
        :meth:`decode`). The first sequence is :meth:`decode`'s (up to ties). A row with fewer than ``k`` allowed
        sequences fills the rest with log-probability ``-inf`` (its tags there are not meaningful). Always the
        loop over time, on every device: there is no parallel variant.

        Args:
            emissions: ``(B, T, K)`` float.
            mask: ``(B, T)`` bool or ``None``.
            k: the number of sequences, at least 1.

        Returns:
            ``tags`` ``(B, k, T)`` long, best first, ``-100`` at masked positions, and their log-probabilities
            ``(B, k)`` float32, non-increasing; a row without unmasked positions has its one empty sequence
            (log-probability 0) first.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mask = self._check(emissions, mask)
        batch_size, length, _ = emissions.shape
        if length == 0:
            tags = torch.full((batch_size, k, 0), IGNORE_INDEX, dtype=torch.long, device=emissions.device)
            empty = torch.full((batch_size, k), float("-inf"), device=emissions.device)
            return tags, empty.index_fill(1, mask.new_zeros(1, dtype=torch.long), 0.0)
        with _autocast_disabled(emissions.device):
            em, mask_c, lengths, order = _left_align(emissions, mask)
            tags, scores = _k_best_viterbi(em, lengths, *self._scores(constrained=True, penalty=float("-inf")), k)
            log_z = self._log_z(em, lengths, *self._scores(constrained=True))
            # A row without unmasked positions has one sequence, the empty one, of score 0.
            empty = torch.full((k,), float("-inf"), device=em.device).index_fill(0, lengths.new_zeros(1), 0.0)
            scores = torch.where((lengths == 0).unsqueeze(1), empty, scores)
            tags = tags.masked_fill(~mask_c.unsqueeze(1), IGNORE_INDEX)
            tags = torch.empty_like(tags).scatter_(2, order.unsqueeze(1).expand_as(tags), tags)
            return tags, scores - log_z.unsqueeze(1)

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior marginals ``P(y_t = k | x)`` by the forward-backward algorithm, respecting the constraints.

        With ``alpha_t(k)`` the log-sum of the scores of all prefixes ``y_0..y_t`` ending in ``y_t = k`` (the
        forward algorithm) and ``beta_t(k)`` the log-sum of the scores of all suffixes ``y_{t+1}..y_{n-1}``
        after ``y_t = k`` (the backward algorithm, including ``f``), every path through ``y_t = k`` is a
        prefix joined to a suffix, so::

            P(y_t = k | x) = exp(alpha_t(k) + beta_t(k) - log Z) = softmax_k(alpha_t(k) + beta_t(k)).

        Args:
            emissions: ``(B, T, K)`` float.
            mask: ``(B, T)`` bool or ``None``.

        Returns:
            ``(B, T, K)`` float32: sums to 1 over ``K`` at unmasked positions, 0 at masked ones.
        """
        mask = self._check(emissions, mask)
        if emissions.size(1) == 0:
            return emissions.float()
        with _autocast_disabled(emissions.device):
            em, mask_c, lengths, order = _left_align(emissions, mask)
            alphas, betas_and_emission = self._forward_backward(em, mask_c, lengths, *self._scores(constrained=True))
            # In exact arithmetic logsumexp_k(alpha_t(k) + beta_t(k)) = log Z at every t. In float32 over a long
            # chain (scores in the thousands) the two drift apart by 1e-3 or more, so normalise per position
            # (a softmax over k) instead of subtracting the global log Z: each row is then a distribution.
            probabilities = (alphas + betas_and_emission - em).softmax(dim=-1)
            probabilities = probabilities.masked_fill(~mask_c.unsqueeze(2), 0.0)
            return torch.zeros_like(probabilities).scatter(1, order.unsqueeze(2).expand_as(em), probabilities)

    def sequence_probability(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Probability ``P(tags | x) = exp(score(tags)) / Z`` of given tag sequences, e.g. the Viterbi paths.

        Under the constraints, as :meth:`decode`, :meth:`marginals` and :meth:`entity_probabilities` see them,
        whatever ``constrain_training``: this is ``exp`` of :meth:`log_likelihood` with ``constrain_training=True``
        (the path score and ``log Z`` both with :data:`CONSTRAINT_PENALTY` on the disallowed moves). A sequence
        with a disallowed move therefore gets 0, the probabilities of all ``K^n`` sequences of a row sum to 1, and
        ``P(y_t = k | x)`` from :meth:`marginals` is the sum of the probabilities of the sequences with
        ``y_t = k``.

        Args:
            emissions: ``(B, T, K)`` float.
            tags: ``(B, T)`` long; values at masked positions are ignored (``decode``'s ``-100`` is fine).
            mask: ``(B, T)`` bool or ``None``.

        Returns:
            ``(B,)`` float32; 1 for a row without unmasked positions (the empty sequence is its only one).
            Differentiable.
        """
        with _autocast_disabled(emissions.device):
            return self._log_likelihood(emissions, tags, mask, constrained=True).exp()

    def entity_probabilities(self, emissions: Tensor, mask: Tensor | None, spans: Tensor) -> Tensor:
        """Probability that the tag sequence holds exactly a given entity, for a batch of spans.

        An entity of type ``X`` on the tagged positions ``s..l`` of a row (positions of the chain, i.e. of the
        compacted row) is there exactly when ``y_s = b``, ``y_t = i`` for ``s < t <= l`` and, if ``l + 1 < n``,
        ``y_{l+1} != i``, with ``b`` and ``i`` the tag ids of ``B-X`` and ``I-X`` (the entity does not go on; a
        following ``B-X`` starts another entity, so it is allowed). Constraints apply as in :meth:`marginals`.

        Every such path is a prefix ending in ``y_s = b``, the fixed middle, and a suffix from ``l + 1`` on that
        does not start with ``i``, so with ``alpha`` and ``beta`` as in :meth:`marginals`::

            log P = alpha_s(b) + sum_{t=s+1}^{l} (A[y_{t-1}, i] + e[t, i]) + R - log Z
            R     = logsumexp_{j != i}(A[y_l, j] + e[l+1, j] + beta_{l+1}(j))   if l + 1 < n
            R     = f[y_l]                                                     if l = n - 1

        where ``y_s = b`` and ``y_t = i`` for ``t > s`` (so ``y_l = b`` for a one-position entity). The middle
        sum is ``A[b, i] + (l - s - 1) A[i, i]`` (when ``l > s``) plus the emissions of ``i`` summed over a
        ``(N, T)`` mask of the positions ``s < t <= l``: no loop, all spans at once. ``log Z`` is taken at ``s``,
        ``logsumexp_k(alpha_s(k) + beta_s(k))``, the per-position normaliser of :meth:`marginals` (see there), so
        that ``P <= P(y_s = b | x)`` holds in float32 too, up to rounding. The alphas and betas come from the
        forward-backward algorithm (:meth:`_forward_backward`), as for :meth:`marginals`.

        Args:
            emissions: ``(B, T, K)`` float.
            mask: ``(B, T)`` bool or ``None``.
            spans: ``(N, 5)`` integer, one span ``(row, start, end, begin_tag, inside_tag)`` per line. ``row``
                indexes the batch; ``start`` and ``end`` are positions as the caller sees them (as in
                :meth:`marginals`' output), ``end`` EXCLUSIVE like a Python slice; ``begin_tag`` and
                ``inside_tag`` are the tag ids of ``B-X`` and ``I-X``. The entity's tagged positions are the
                unmasked ones in ``[start, end)``: ``start`` must be unmasked, masked positions within the span
                (e.g. later subword tokens) are skipped as the chain skips them, and "the next tagged position" is
                the first unmasked one at or after ``end``. Spans may overlap and come in any order.

        Returns:
            ``(N,)`` float32. 0 for a span that no tag sequence holds: a masked ``start``, ``end <= start``, or
            a value out of range (not raised as an error, which would wait for the device). Differentiable.
        """
        mask = self._check(emissions, mask)
        if spans.dim() != 2 or spans.size(1) != 5 or spans.dtype.is_floating_point or spans.dtype == torch.bool:
            raise ValueError(
                "spans must be an integer tensor of shape (N, 5): (row, start, end, begin_tag, inside_tag), "
                f"got {spans.dtype} {tuple(spans.shape)}"
            )
        batch_size, length, _ = emissions.shape
        if batch_size == 0 or length == 0:  # no span is in range
            return emissions.float().new_zeros(spans.size(0))
        with _autocast_disabled(emissions.device):
            em, mask_c, lengths, _ = _left_align(emissions, mask)
            start, transitions, end = self._scores(constrained=True)
            alphas, betas_and_emission = self._forward_backward(em, mask_c, lengths, start, transitions, end)
            return _entity_probabilities(em, alphas, betas_and_emission, mask, lengths, spans, transitions, end)

    # ------------------------------------------------------------------------------------------------------
    # Helpers

    def _check(self, emissions: Tensor, mask: Tensor | None) -> Tensor:
        """Validate shapes (no host synchronisation) and return the mask as bool ``(B, T)``."""
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(f"emissions must have shape (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask is None:
            return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}")
        return mask.bool()

    def _algorithms(self, device: torch.device) -> _Algorithms:
        """The one selector: the reference algorithms or the parallel variants, for data on ``device``, as
        ``implementation`` says (validated when set)."""
        parallel = device.type != "cpu" if self.implementation == "auto" else self.implementation == "parallel"
        if parallel:
            return _Algorithms("parallel", _forward_parallel, _log_partition_parallel, _viterbi_parallel)
        return _Algorithms("sequential", _forward, _log_partition, _viterbi)

    def _scores(self, constrained: bool, penalty: float = CONSTRAINT_PENALTY) -> tuple[Tensor, Tensor, Tensor]:
        """Float32 start ``(K,)``, transition ``(K, K)`` and end ``(K,)`` scores, ``penalty`` added to the
        disallowed ones when ``constrained``."""
        scores = []
        for parameter, allowed in (
            (self.start_transitions, self.allowed_start),
            (self.transitions, self.allowed_transitions),
            (self.end_transitions, self.allowed_end),
        ):
            score = parameter.float()
            if constrained and allowed is not None:
                score = score + torch.where(allowed, 0.0, penalty)
            scores.append(score)
        return scores[0], scores[1], scores[2]

    def _log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor | None, constrained: bool) -> Tensor:
        """:meth:`log_likelihood` ``(B,)``, with the constraints' penalties in the scores when ``constrained``."""
        mask = self._check(emissions, mask)
        if tags.shape != mask.shape:
            raise ValueError(f"tags must have shape {tuple(mask.shape)}, got {tuple(tags.shape)}")
        if emissions.size(1) == 0:
            return emissions.float().sum(dim=(1, 2))  # zeros, connected to the graph
        with _autocast_disabled(emissions.device):
            em, mask_c, lengths, order = _left_align(emissions, mask)
            # Tags of the compacted rows; padding gets tag 0 so that it can index safely.
            tags_c = tags.gather(1, order).masked_fill(~mask_c, 0)
            start, transitions, end = self._scores(constrained)
            gold = _path_score(em, tags_c, mask_c, lengths, start, transitions, end)
            return gold - self._log_z(em, lengths, start, transitions, end)

    def _forward_backward(
        self, em: Tensor, mask_c: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The forward-backward algorithm: forward and backward log-scores of left-aligned emissions.

        Returns ``alpha`` ``(B, T, K)`` (see :func:`_forward`) and ``beta_t(k) + e[t, k]`` ``(B, T, K)``,
        where ``beta_t(k)`` is the log-sum of the scores of all suffixes ``y_{t+1}..y_{n-1}`` after ``y_t = k``,
        the end score included::

            beta_{n-1}(k) = f[k],   beta_t(k) = logsumexp_j(A[k, j] + e[t+1, j] + beta_{t+1}(j)).

        Values past a row's end are not meaningful.
        """
        forward = self._algorithms(em.device).forward
        alphas = forward(em, start, transitions)
        # The backward algorithm is the forward algorithm on the reversed chain: reverse each sequence in place,
        # start with f, move from tag j to tag i with score A[i, j] (i.e. A transposed). Its alphas, reversed
        # back, are beta_t(k) + e[t, k]: the suffixes from position t on, emission at t included.
        reverse = _reverse_index(mask_c, lengths)
        betas_and_emission = _gather_time(forward(_gather_time(em, reverse), end, transitions.t()), reverse)
        return alphas, betas_and_emission

    def _log_z(self, em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
        """``log Z`` ``(B,)`` of left-aligned emissions, 0 for empty rows."""
        log_z = self._algorithms(em.device).log_partition(em, lengths, start, transitions, end)
        return log_z.masked_fill(lengths == 0, 0.0)


# ----------------------------------------------------------------------------------------------------------
# The reference algorithms. Each takes LEFT-ALIGNED float32 emissions ``em`` (B, T, K) whose padding is 0 (see
# ``_left_align``), the sequence ``lengths`` (B,) where needed, and float32 scores s (K,), A (K, K), f (K,).


def _forward(em: Tensor, start: Tensor, transitions: Tensor) -> Tensor:
    """The forward algorithm: ``alpha`` ``(B, T, K)``, as a loop over time.

    ``alpha_t(j)`` is the log-sum of the scores of all prefixes ``y_0..y_t`` with ``y_t = j`` (emission at ``t``
    included). Splitting on the previous tag ``y_{t-1} = i`` gives the recursion::

        alpha_0(j) = s[j] + e[0, j]
        alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + A[i, j]) + e[t, j]

    Values past a row's end are not meaningful (but finite).
    """
    steps = em.unbind(dim=1)  # T tensors (B, K)
    alpha = start + steps[0]
    alphas = [alpha]
    for emission in steps[1:]:
        # (B, K, 1) + (K, K) -> (B, K, K) indexed [b, i, j]; log-sum-exp over the previous tag i.
        alpha = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emission
        alphas.append(alpha)
    return torch.stack(alphas, dim=1)


def _log_partition(em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """``log Z = logsumexp_j(alpha_{n-1}(j) + f[j])`` ``(B,)`` by the forward algorithm (:func:`_forward`).

    Autograd differentiates it through the loop: ``d log Z / d e[t, j] = P(y_t = j | x)``, the marginals, and
    ``d log Z / d A[i, j] = sum_t P(y_{t-1} = i, y_t = j | x)``; replaying the loop backwards is the backward
    algorithm.
    """
    return torch.logsumexp(_at_last(_forward(em, start, transitions), lengths) + end, dim=-1)


def _path_score(
    em: Tensor, tags: Tensor, mask: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """``score(tags)`` ``(B,)`` of given tag sequences, vectorised over batch and time.

    ``tags`` ``(B, T)`` must be valid tag ids everywhere (padding included); ``mask`` ``(B, T)`` is left-aligned.
    """
    emission = em.gather(2, tags.unsqueeze(2)).squeeze(2).sum(dim=1)  # sum_t e[t, y_t]; padding is 0
    transition = transitions[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0.0).sum(dim=1)
    last_tags = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    score = start[tags[:, 0]] + emission + transition + end[last_tags]
    return score.masked_fill(lengths == 0, 0.0)


def _viterbi(em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """Best tag sequences ``(B, T)`` by the Viterbi algorithm, as a loop over time; values past a row's end are not
    meaningful.

    The forward algorithm with max instead of log-sum-exp: ``v_t(j)``, the best score of a prefix ending in
    ``y_t = j``, and the back-pointer ``p_t(j)``, the previous tag of that best prefix::

        v_0(j) = s[j] + e[0, j]
        v_t(j) = max_i(v_{t-1}(i) + A[i, j]) + e[t, j],   p_t(j) = argmax_i(v_{t-1}(i) + A[i, j])

    The loop computes ``v`` and ``p`` one step at a time; the best path is then read backwards from them
    (:func:`_best_paths`).
    """
    batch_size, _, num_tags = em.shape
    transitions_to = transitions.t().contiguous()  # [j, i], see _viterbi_candidates
    steps = em.transpose(0, 1).contiguous().unbind(dim=0)  # time-major contiguous steps
    score = start + steps[0]
    score_list, pointer_list = [score], []
    for emission in steps[1:]:
        best, pointer = _viterbi_candidates(score, transitions_to).max(dim=2)  # over the previous tag i, (B, K)
        score = best + emission
        score_list.append(score)
        pointer_list.append(pointer)
    scores = torch.stack(score_list)  # (T, B, K)
    pointers = torch.stack(pointer_list) if pointer_list else scores.new_empty(0, batch_size, num_tags).long()
    # Short blocks: on a CPU fewer, smaller rounds of pointer doubling win (see _trace_back).
    return _best_paths(scores, pointers, lengths, end, block=_TRACE_BACK_BLOCK)


def _k_best_viterbi(
    em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The ``k`` best tag sequences ``(B, k, T)`` and their scores ``(B, k)``, best first, as a loop over time
    (values past a row's end are not meaningful; missing sequences score ``-inf``).

    Viterbi keeps, for each tag ``j``, the best prefix ending in ``y_t = j``; the k best whole sequences may share
    a tag at ``t`` and differ before it, so here each tag keeps its ``k`` best prefixes, ``v_t(j, r)`` for ranks
    ``r = 0..k-1``. A prefix of rank ``r`` ending in ``j`` at ``t`` extends one of the ``k`` best prefixes ending in
    some ``i`` at ``t-1`` (any prefix is the extension of its own prefix, and replacing that by a better one of the
    same last tag gives a better prefix), so the ``k`` best are among those ``K k`` extensions::

        v_0(j, 0) = s[j] + e[0, j],   v_0(j, r > 0) = -inf
        v_t(j, .) = top-k over (i, r') of (v_{t-1}(i, r') + A[i, j]) + e[t, j],  p_t(j, r) = the (i, r') taken

    and the k best sequences end in the top-k over ``(j, r)`` of ``v_{n-1}(j, r) + f[j]``, read backwards along
    ``p``. Exact: no pruning beyond what cannot reach the top k. ``O(n K^2 k log k)``. Past a row's end the
    back-pointers are the identity (``p_t(j, r) = (j, r)``), so all rows are traced back together from ``T-1``.
    """
    batch_size, length, num_tags = em.shape
    # Candidates and states are flattened as (tag, rank) -> tag * k + rank.
    score = torch.full((batch_size, num_tags, k), float("-inf"), device=em.device)
    score[:, :, 0] = start + em[:, 0]
    identity = torch.arange(num_tags * k, device=em.device).view(num_tags, k)
    pointers = []
    for t in range(1, length):
        # [b, j, i * k + r'] = v_{t-1}(i, r') + A[i, j]
        candidates = (score.unsqueeze(2) + transitions.unsqueeze(-1)).permute(0, 2, 1, 3)
        best, pointer = candidates.reshape(batch_size, num_tags, num_tags * k).topk(k, dim=2)
        in_sequence = (t < lengths).view(batch_size, 1, 1)
        score = torch.where(in_sequence, best + em[:, t].unsqueeze(2), score)
        pointers.append(torch.where(in_sequence, pointer, identity))
    final, state = (score + end.unsqueeze(1)).reshape(batch_size, num_tags * k).topk(k, dim=1)  # (B, k) each
    tags = [state // k]
    for pointer in reversed(pointers):
        state = pointer.reshape(batch_size, num_tags * k).gather(1, state)
        tags.append(state // k)
    return torch.stack(tags[::-1], dim=2), final


def _viterbi_candidates(scores: Tensor, transitions_to: Tensor) -> Tensor:
    """The scores ``v_{t-1}(i) + A[i, j]`` of extending a best prefix by one tag, laid out ``[..., j, i]``.

    ``scores`` ``(..., K)`` holds ``v_{t-1}``, ``transitions_to`` ``(K, K)`` is ``A`` transposed (``[j, i]``)
    and contiguous; the result is ``(..., K, K)``. In this layout the max and argmax over the previous tag ``i``
    run over the innermost, contiguous dimension, the fastest reduction; the values added and compared are the
    same as in the textbook layout.
    """
    return scores.unsqueeze(-2) + transitions_to


def _best_paths(scores: Tensor, pointers: Tensor, lengths: Tensor, end: Tensor, block: int) -> Tensor:
    """Best tag sequences ``(B, T)`` from the Viterbi scores ``v`` ``(T, B, K)`` and back-pointers ``p_1 ..
    p_{T-1}`` ``(T-1, B, K)`` (time-major, see :func:`_viterbi`); values past a row's end are not
    meaningful.

    The best path ends in ``y_{n-1} = argmax_j(v_{n-1}(j) + f[j])`` and is recovered backwards with
    ``y_{t-1} = p_t(y_t)``. Back-pointers past a row's end are set to the identity, ``p_t(j) = j``, so all rows
    are traced back together from ``t = T-1``: a row's tag stays ``y_{n-1}`` until ``t = n-1``. Instead of
    ``T`` dependent ``gather`` steps, the back-pointer maps are composed by pointer doubling in blocks of
    ``block`` steps (``_trace_back``): ``y_t = (p_{t+1} o p_{t+2} o ... o p_{T-1})(y_{T-1})``.
    """
    length, batch_size, num_tags = scores.shape
    last = (lengths - 1).clamp(min=0).view(1, batch_size, 1).expand(1, batch_size, num_tags)
    final = scores.gather(0, last).squeeze(0) + end  # v_{n-1} + f, (B, K)
    best_last = final.argmax(dim=1)  # y_{n-1}, (B,)

    # maps[t] = p_{t+1}, from the tag at t+1 to the tag at t: (T, B, K); the identity where t+1 >= n.
    identity = torch.arange(num_tags, device=scores.device).expand(batch_size, num_tags)
    in_sequence = torch.arange(1, length + 1, device=scores.device).view(-1, 1, 1) < lengths.view(1, -1, 1)
    maps = torch.where(in_sequence, torch.cat([pointers, identity.unsqueeze(0)]), identity)
    return _trace_back(maps, best_last, block).t()


_TRACE_BACK_BLOCK = 16


def _trace_back(maps: Tensor, last: Tensor, block: int) -> Tensor:
    """Tags ``(T, B)`` of the paths that ``maps`` ``(T, B, K)`` trace back from ``last`` ``(B,)``: ``maps[t]``
    takes the tag at ``t+1`` to the tag at ``t`` and the tag "at ``T``" is ``last`` (so with ``maps[T-1]`` the
    identity, ``y_{T-1} = last``).

    Following the maps one step at a time is ``T`` dependent ``gather`` steps. Instead, time is cut into blocks
    of ``block`` steps (the last one padded with identities). Within every block at once the maps are composed
    by pointer doubling: after the round with offset ``d``, ``m[b, s] = maps[s] o ... o maps[s+2d-1]`` within
    block ``b`` (composition ``f o g = f.gather(g)``), so in the end ``m[b, s]`` takes the tag after block ``b``
    to the tag at ``s``. Then a walk back over the blocks gives the tag after each block, and one ``gather``
    reads every position. ``log2(block)`` rounds plus ``T / block`` dependent steps: ``block = T`` is pure
    pointer doubling.
    """
    length, batch_size, num_tags = maps.shape
    block = min(block, length)
    blocks = -(-length // block)
    padding = blocks * block - length
    if padding:
        identity = torch.arange(num_tags, device=maps.device).expand(padding, batch_size, num_tags)
        maps = torch.cat([maps, identity])
    composed = maps.view(blocks, block, batch_size, num_tags)
    offset = 1
    while offset < block:
        later = composed[:, offset:]
        composed = torch.cat([composed[:, :-offset].gather(3, later), composed[:, -offset:]], dim=1)
        offset *= 2
    # after[b] = the tag after block b: the last block's is `last`; block b's is block b+1's first tag.
    tag, after = last, [last]
    for first_maps in composed[1:, 0].unbind(0)[::-1]:
        tag = first_maps.gather(1, tag.unsqueeze(1)).squeeze(1)
        after.append(tag)
    after = torch.stack(after[::-1]).view(blocks, 1, batch_size, 1).expand(blocks, block, batch_size, 1)
    return composed.gather(3, after).squeeze(3).reshape(blocks * block, batch_size)[:length]


def _entity_probabilities(
    em: Tensor,
    alphas: Tensor,
    betas_and_emission: Tensor,
    mask: Tensor,
    lengths: Tensor,
    spans: Tensor,
    transitions: Tensor,
    end: Tensor,
) -> Tensor:
    """``P(y_s = b, y_{s+1..l} = i, y_{l+1} != i | x)`` ``(N,)`` of the ``spans`` (see
    :meth:`LinearChainCRF.entity_probabilities`, whose recurrence this computes) for every span at once.

    ``alphas`` and ``betas_and_emission`` come from ``LinearChainCRF._forward_backward``; ``mask`` ``(B, T)`` is
    the caller's (not left-aligned) mask that the spans' positions refer to; ``spans`` ``(N, 5)``.
    """
    batch_size, length, num_tags = em.shape
    rows, first, stop, begin, inside = spans.long().unbind(dim=1)  # (N,) each
    valid = (rows >= 0) & (rows < batch_size) & (first >= 0) & (first < stop) & (stop <= length)
    valid &= (begin >= 0) & (begin < num_tags) & (inside >= 0) & (inside < num_tags)
    # Clamped, every index below is in range; the invalid spans' results are discarded at the end.
    rows, first, stop = rows.clamp(0, batch_size - 1), first.clamp(0, length - 1), stop.clamp(0, length)
    begin, inside = begin.clamp(0, num_tags - 1), inside.clamp(0, num_tags - 1)
    valid &= mask[rows, first]
    # From the caller's positions to the chain's: before[r, p] = number of unmasked positions of row r before p.
    before = torch.cat([mask.new_zeros(batch_size, 1, dtype=torch.long), mask.long().cumsum(dim=1)], dim=1)
    s = before[rows, first]  # the B tag's position, (N,)
    last = (before[rows, stop] - 1).clamp(min=0)  # l, the entity's last position, >= s for a valid span
    count = (last - s).clamp(min=0)  # l - s, the number of I tags

    # alpha_s(b) - log Z, with log Z = logsumexp_k(alpha_s(k) + beta_s(k)), the normaliser at s.
    alpha_s = alphas[rows, s]  # (N, K)
    log_z = torch.logsumexp(alpha_s + betas_and_emission[rows, s] - em[rows, s], dim=1)
    head = alpha_s.gather(1, begin.unsqueeze(1)).squeeze(1) - log_z
    # sum_{t=s+1}^{l} (A[y_{t-1}, i] + e[t, i]): A[b, i] once and A[i, i] l-s-1 times, and a masked sum over time.
    times = torch.arange(length, device=em.device)
    in_middle = (times > s.unsqueeze(1)) & (times <= last.unsqueeze(1))  # (N, T)
    emission = em[rows.unsqueeze(1), times, inside.unsqueeze(1)].masked_fill(~in_middle, 0.0).sum(dim=1)
    moves = transitions[begin, inside] + (count - 1) * transitions[inside, inside]
    middle = emission + torch.where(count > 0, moves, 0.0)
    # R: the suffixes after l that do not continue the entity, or the end score f[y_l] if l is the last position.
    last_tag = torch.where(count > 0, inside, begin)  # y_l
    following = (last + 1).clamp(max=length - 1)
    suffixes = transitions[last_tag] + betas_and_emission[rows, following]  # A[y_l, j] + e[l+1, j] + beta_{l+1}(j)
    continues = torch.arange(num_tags, device=em.device) == inside.unsqueeze(1)  # j = i, (N, K)
    rest = torch.logsumexp(suffixes.masked_fill(continues, _LOG_ZERO), dim=1)
    tail = torch.where(last + 1 < lengths[rows], rest, end[last_tag])
    # A log-probability is at most 0; float32 rounding of scores in the hundreds can overshoot it by ~1e-4.
    return (head + middle + tail).clamp(max=0).masked_fill(~valid, float("-inf")).exp()


# ----------------------------------------------------------------------------------------------------------
# The parallel variants (selected on GPUs): the same inputs and results as the reference algorithms above, in
# O(log T) sequential steps.


def _semiring_matmul(a: Tensor, b: Tensor, reduce: Reduce = torch.logsumexp) -> Tensor:
    """Matrix product in the log semiring (``+`` becomes ``logsumexp``, ``*`` becomes ``+``), or with
    ``reduce=torch.amax`` in the max-plus semiring (``+`` becomes ``max``), where Viterbi scores live.

    ``a`` ``(..., K, K)``, ``b`` ``(..., K, K)`` -> ``(..., K, K)``: ``c[i, j] = reduce_k(a[i, k] + b[k, j])``.
    """
    return reduce(a.unsqueeze(-1) + b.unsqueeze(-3), dim=-2)


def _log_identity(num_tags: int, device: torch.device) -> Tensor:
    """Identity ``(K, K)`` of the log semiring: 0 on the diagonal, "log 0" elsewhere."""
    identity = torch.full((num_tags, num_tags), _LOG_ZERO, device=device)
    return identity.fill_diagonal_(0.0)


def _step_matrices(em: Tensor, transitions: Tensor) -> Tensor:
    """Per-step matrices ``M_t[i, j] = A[i, j] + e[t, j]`` for ``t = 1..T-1``: ``(B, T-1, K, K)``.

    In the log semiring the forward recursion is a vector-matrix product, ``alpha_t = alpha_{t-1} M_t``, so
    ``alpha_t = alpha_0 M_1 M_2 ... M_t``; the matrix products are associative and can be computed in any
    grouping, in parallel.
    """
    return transitions + em[:, 1:].unsqueeze(2)


def _log_partition_parallel(em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """``log Z`` ``(B,)`` by a parallel reduction over time: O(log T) sequential steps instead of T. Same result as
    :func:`_log_partition`.

    ``log Z = logsumexp_{i,j}(alpha_0(i) + (M_1 ... M_{n-1})[i, j] + f[j])``. Matrices past a row's end are
    replaced by the identity, so every row multiplies the same number of matrices; that number is padded with
    identities to a power of two, and neighbouring matrices are multiplied pairwise until one is left.
    """
    batch_size, length, num_tags = em.shape
    identity = _log_identity(num_tags, em.device)
    steps = _step_matrices(em, transitions)  # (B, T-1, K, K)
    in_sequence = torch.arange(1, length, device=em.device) < lengths.unsqueeze(1)  # (B, T-1)
    steps = torch.where(in_sequence[:, :, None, None], steps, identity)
    padded = 1 << max(length - 2, 0).bit_length()  # the power of two >= T - 1 (and >= 1)
    if padded > length - 1:
        padding = identity.expand(batch_size, padded - (length - 1), num_tags, num_tags)
        steps = torch.cat([steps, padding], dim=1)
    while steps.size(1) > 1:  # (M_1 M_2)(M_3 M_4)... : halve the number of matrices
        steps = _semiring_matmul(steps[:, 0::2], steps[:, 1::2])
    alpha_0 = start + em[:, 0]  # (B, K)
    alpha_last = torch.logsumexp(alpha_0.unsqueeze(2) + steps[:, 0], dim=1)  # (B, K)
    return torch.logsumexp(alpha_last + end, dim=-1)


def _forward_parallel(em: Tensor, start: Tensor, transitions: Tensor, reduce: Reduce = torch.logsumexp) -> Tensor:
    """The forward algorithm as a parallel prefix scan: ``alpha`` ``(B, T, K)`` in O(log T) sequential steps.

    Same result as :func:`_forward`. ``alpha_t = alpha_0 P_t`` with the prefix products
    ``P_t = M_1 ... M_t`` (see ``_step_matrices``), which the Hillis-Steele scan computes: after the round with
    offset ``d``, entry ``t`` holds the product of the last ``min(2d, t)`` matrices up to ``M_t``. With
    ``reduce=torch.amax`` the same scan in the max-plus semiring gives the Viterbi scores ``v`` (see
    :func:`_viterbi` and :func:`_viterbi_parallel`).
    """
    alpha_0 = start + em[:, 0]  # (B, K)
    prefix = _step_matrices(em, transitions)  # (B, T-1, K, K)
    offset = 1
    while offset < prefix.size(1):
        product = _semiring_matmul(prefix[:, :-offset], prefix[:, offset:], reduce)
        prefix = torch.cat([prefix[:, :offset], product], dim=1)
        offset *= 2
    # alpha_t(j) = reduce_i(alpha_0(i) + P_t[i, j])
    later = reduce(alpha_0[:, None, :, None] + prefix, dim=2)  # (B, T-1, K)
    return torch.cat([alpha_0.unsqueeze(1), later], dim=1)


def _viterbi_parallel(em: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor) -> Tensor:
    """Best tag sequences ``(B, T)`` by the Viterbi algorithm in O(log T) sequential steps; values past a row's
    end are not meaningful.

    Same recursion as :func:`_viterbi`, which is the forward recursion in the max-plus semiring, so the
    prefix scan of :func:`_forward_parallel` with ``reduce=torch.amax`` computes every ``v_t`` (``v_t =
    v_0 M_1 ... M_t`` with max-plus matrix products). Then every back-pointer comes out of ``v_{t-1}`` at once,
    ``p_t(j) = argmax_i(v_{t-1}(i) + A[i, j])``. The scan adds the same numbers as the loop in another order, so
    only a near-tie (two prefixes within float32 rounding) can pick the other of two equally good paths.
    """
    scores = _forward_parallel(em, start, transitions, torch.amax).transpose(0, 1)  # (T, B, K)
    pointers = _viterbi_candidates(scores[:-1], transitions.t().contiguous()).argmax(dim=3)  # (T-1, B, K)
    # One block: pure pointer doubling, no dependent steps at all.
    return _best_paths(scores, pointers, lengths, end, block=em.size(1))


# ----------------------------------------------------------------------------------------------------------
# Masks


def _left_align(emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move the unmasked positions of each row to its front, keeping their order.

    Args:
        emissions: ``(B, T, K)`` any float dtype.
        mask: ``(B, T)`` bool, any pattern.

    Returns:
        ``em`` ``(B, T, K)`` float32, left-aligned, 0 on padding; ``mask_c`` ``(B, T)``, the left-aligned mask;
        ``lengths`` ``(B,)``; ``order`` ``(B, T)``, the original position of each compacted one (a permutation
        of each row: ``x_c = x.gather(1, order)`` and ``x = empty.scatter(1, order, x_c)``).
    """
    batch_size, length, num_tags = emissions.shape
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # unmasked positions first, in order
    lengths = mask.sum(dim=1)
    mask_c = torch.arange(length, device=mask.device) < lengths.unsqueeze(1)
    em = emissions.float().gather(1, order.unsqueeze(2).expand(batch_size, length, num_tags))
    return em.masked_fill(~mask_c.unsqueeze(2), 0.0), mask_c, lengths, order


def _reverse_index(mask_c: Tensor, lengths: Tensor) -> Tensor:
    """``(B, T)`` index reversing each left-aligned row within its length (padding stays in place)."""
    positions = torch.arange(mask_c.size(1), device=mask_c.device).expand_as(mask_c)
    return torch.where(mask_c, lengths.unsqueeze(1) - 1 - positions, positions)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t], :]`` for ``x`` ``(B, T, K)`` and ``index`` ``(B, T)``."""
    return x.gather(1, index.unsqueeze(2).expand_as(x))


def _at_last(x: Tensor, lengths: Tensor) -> Tensor:
    """``x[b, lengths[b] - 1, :]`` ``(B, K)`` for left-aligned ``x`` ``(B, T, K)`` (position 0 for empty rows)."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.size(2))
    return x.gather(1, index).squeeze(1)


def _autocast_disabled(device: torch.device) -> torch.autocast:
    """Context in which autocast is off for ``device``, so that float32 stays float32. A device without autocast
    (e.g. ``meta``) is never inside one: disabling the CPU's is then a no-op."""
    device_type = device.type if torch.amp.is_autocast_available(device.type) else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)
