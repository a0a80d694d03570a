"""Model cards read back from the artifact store (content-addressed, so cached by digest):
what a version's input signature is, for request schemas and promotion checks."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from contracts.events import ArtifactRef
from contracts.model_card import ModelCard, TensorSignature
from contracts.request_schema import signature_change
from libs.storage import ArtifactStore
from services.registry.tables import ModelVersion

log = logging.getLogger("lmesh.registry")

_CACHE_SIZE = 1024


class CardUnavailable(LookupError):
    """The version's model card cannot be read from the store."""


class CardReader:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._cards: dict[str, ModelCard] = {}

    def card(self, mv: ModelVersion) -> ModelCard:
        ref = ArtifactRef.model_validate(mv.card)
        card = self._cards.get(ref.sha256)
        if card is not None:
            return card
        try:
            card = ModelCard.model_validate_json(self.store.get(ref, verify=True))
        except (OSError, ValueError, ValidationError) as exc:
            raise CardUnavailable(
                f"the model card of {mv.model_name} version {mv.version} is not readable "
                f"from the store ({type(exc).__name__}: {exc})"
            ) from None
        if len(self._cards) >= _CACHE_SIZE:
            self._cards.clear()
        self._cards[ref.sha256] = card
        return card

    def input_signature(self, mv: ModelVersion) -> TensorSignature | None:
        """None (and a warning) when the card cannot be read: the check is then skipped."""
        try:
            return self.card(mv).input
        except CardUnavailable as exc:
            log.warning("input signature not checked: %s", exc)
            return None

    def change(self, holder: ModelVersion, target: ModelVersion) -> str | None:
        """How ``target``'s input signature differs from ``holder``'s (None: it does not,
        or a card is unreadable)."""
        old, new = self.input_signature(holder), self.input_signature(target)
        if old is None or new is None:
            return None
        return signature_change(old, new)
