"""The model source: where artifacts live, read through obstore.

:class:`ModelSource` stats, lists and fetches artifacts from a folder, a ``file://`` URI or
``s3://bucket/prefix/`` (S3 and S3-compatible servers); :func:`validate_target_model` checks a
request's target model before anything is touched.
"""

from modelfleet.source.store import ArtifactInfo, ModelSource
from modelfleet.source.target import (
    MAX_TARGET_MODEL_LENGTH,
    archive_mode,
    is_archive,
    validate_target_model,
)
from modelfleet.source.uri import SUPPORTED_SCHEMES, is_loopback_host

__all__ = [
    "MAX_TARGET_MODEL_LENGTH",
    "SUPPORTED_SCHEMES",
    "ArtifactInfo",
    "ModelSource",
    "archive_mode",
    "is_archive",
    "is_loopback_host",
    "validate_target_model",
]
