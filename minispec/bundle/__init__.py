"""Reproducibility bundles: one tar.gz with the spec, the compiled pipeline, ``dvc.lock``, the
environment, metrics, plots and logs (optionally every artifact), and a sha256 manifest.

- :func:`create_bundle` (``minispec bundle create``) — :mod:`minispec.bundle.create`
- :func:`verify_bundle` (``minispec bundle verify``) — :mod:`minispec.bundle.verify`
- :func:`reproduce_bundle` (``minispec bundle reproduce``) — :mod:`minispec.bundle.reproduce`

Archives are read with explicit member checks (:mod:`minispec.bundle.archive`); DVC's md5 and
directory hashes are recomputed by :mod:`minispec.bundle.dvchash`.
"""

from __future__ import annotations

from minispec.bundle.archive import BundleError, UnsafeArchiveError, safe_extract
from minispec.bundle.create import create_bundle
from minispec.bundle.reproduce import reproduce_bundle
from minispec.bundle.verify import BundleVerifyError, verify_bundle

__all__ = [
    "BundleError",
    "BundleVerifyError",
    "UnsafeArchiveError",
    "create_bundle",
    "reproduce_bundle",
    "safe_extract",
    "verify_bundle",
]
