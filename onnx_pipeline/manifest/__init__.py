"""Typed manifests of run folders and bundles, and the trust boundary around the folders they describe.

A run folder or a bundle is handed from machine to machine: it is untrusted input. Every reader of a
manifest goes through ``RunManifest.read`` / ``BundleManifest.read`` (or ``read_manifest`` for
either), which

- validates every field it returns (types, ranges, names), refusing a malformed manifest with one
  line (``InputError``, exit 2);
- checks the manifest's own ``content_sha256`` (written by ``write``), so an edit of labels,
  preprocessing or any other field after the folder was written is caught;
- requires every path to be relative, to stay inside the folder once symlinks are resolved, and to
  be listed in ``files`` with its sha256; every listed file is hashed before anything is loaded
  (``IntegrityError``).

Hashes catch damage and careless edits, not a forger: whoever can rewrite the files can rewrite the
hashes. ``ManifestBase.digest`` (the sha256 of ``manifest.json``) identifies a folder's exact content
and can be compared with the digest the sender printed (see the README's security model).

Schema versions: ``/2`` is written; ``/1`` still reads (a bundle's per-artifact sections were
top-level keys then, ``artifacts`` now).
"""

from onnx_pipeline.manifest.folder import (
    BUNDLE_SCHEMA,
    BUNDLE_SCHEMAS,
    BUNDLE_UNLISTED,
    MANIFEST,
    RUN_SCHEMA,
    RUN_SCHEMAS,
    RUN_UNLISTED,
    check_files,
    content_digest,
    hash_folder,
    inside,
)
from onnx_pipeline.manifest.types import (
    BundleManifest,
    ManifestBase,
    ModelRecord,
    ModelSource,
    RunManifest,
    TargetInfo,
    TensorSpec,
    read_manifest,
)

__all__ = [
    "BUNDLE_SCHEMA",
    "BUNDLE_SCHEMAS",
    "BUNDLE_UNLISTED",
    "MANIFEST",
    "RUN_SCHEMA",
    "RUN_SCHEMAS",
    "RUN_UNLISTED",
    "BundleManifest",
    "ManifestBase",
    "ModelRecord",
    "ModelSource",
    "RunManifest",
    "TargetInfo",
    "TensorSpec",
    "check_files",
    "content_digest",
    "hash_folder",
    "inside",
    "read_manifest",
]
