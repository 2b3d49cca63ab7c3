"""Where a capture's outcomes come from: an outcome export file or the outcomes topic.

The reading itself is the verifier's (:mod:`pipeline.verify.sources`): a JSON Lines export
(one outcome record per line, the topic's value bytes; a bad line is an error naming it) or
``kafka:TOPIC`` (every partition from its beginning up to the end offsets at the start). Rows
come back in arrival order, duplicates included: sorting and de-duplication belong to
:func:`pipeline.capture.build_capture`, which counts what it drops.
"""
from __future__ import annotations

from pipeline.capture import CaptureError
from pipeline.outcomes import Outcomes
from pipeline.settings import Settings
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.verify.sources import VerifyInputError, outcomes_of, read_records


def load_outcomes(source: str, settings: Settings) -> Outcomes:
    """The outcomes of ``source`` (a file path or ``kafka:TOPIC``); :class:`CaptureError` (one
    line) for anything unreadable."""
    try:
        return outcomes_of(read_records(source, KafkaAccess.from_settings(settings)))
    except (VerifyInputError, ValueError) as exc:
        raise CaptureError(str(exc)) from None
