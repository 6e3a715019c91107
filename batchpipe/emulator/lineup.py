"""The emulator's model lineup: which models it serves now, their SPEC ``Model`` objects, and the 404 for the rest.

Everything is read from the emulator's model table (:class:`batchpipe.domain.modeltable.ModelTable`, by default the
shipped ``batchpipe/data/image-models.toml``) and its lifecycle clock (``EmulatorConfig.now``). A model serves
requests until its shutdown moment, 00:00 UTC on the row's ``shutdown`` date (``ModelFacts.shutdown_at``).
Outside the table, or from that moment on, every request for it answers HTTP 404 with the body the API gives an
unknown model (M26 §1: "``model_not_found`` is what the API returns for unknown models"; the code for a
shut-down model is unconfirmed there, so the emulator answers the same).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from batchpipe.domain.modeltable import ModelFacts, ModelTable

__all__ = ["MODEL_OWNER", "model_not_found_body", "model_object", "serves"]

#: ``Model.owned_by`` for every model the emulator lists: the value in the SPEC ``Model`` example (x-oaiMeta).
MODEL_OWNER: Final = "openai"


def serves(table: ModelTable, model: str, now: dt.datetime) -> bool:
    """True when ``model`` is in ``table`` and its shutdown moment (00:00 UTC on ``shutdown``) is after ``now``
    (an aware ``datetime``), or it has no shutdown date."""
    facts = table.get(model)
    if facts is None:
        return False
    end = facts.shutdown_at()
    return end is None or end > now


def model_not_found_body(model: str) -> dict[str, object]:
    """The SPEC ``ErrorResponse`` the API answers with HTTP 404 for a model it does not serve:
    ``{"error": {"message": "The model 'X' does not exist or you do not have access to it.",
    "type": "invalid_request_error", "param": null, "code": "model_not_found"}}``."""
    return {
        "error": {
            "message": f"The model '{model}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


def model_object(facts: ModelFacts) -> dict[str, object]:
    """The SPEC ``Model`` of one table row: ``{"id", "object": "model", "created", "owned_by", "shutdown_date"}``.

    ``created``: unix seconds of 00:00 UTC on the row's ``launched`` date, 0 when the table has none (aliases
    and the older rows). ``owned_by``: :data:`MODEL_OWNER`. ``shutdown_date``: the row's ``shutdown`` as
    ``YYYY-MM-DD`` (SPEC ``Model.shutdown_date``: string, format date), or null when none is announced.
    """
    created = 0
    if facts.launched is not None:
        created = int(dt.datetime.combine(facts.launched, dt.time(), tzinfo=dt.UTC).timestamp())
    return {
        "id": facts.name,
        "object": "model",
        "created": created,
        "owned_by": MODEL_OWNER,
        "shutdown_date": facts.shutdown.isoformat() if facts.shutdown is not None else None,
    }
