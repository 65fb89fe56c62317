"""The XDS.b Document Repository: ITI-41 Provide and Register Document Set-b in, ITI-42 out.

The steps follow ITI TF-2 3.41.4.1.3: match documents to DocumentEntries, check the metadata,
hash and count every document, add hash / size / repositoryUniqueId, store the bytes, register
with the registry, and only then answer. A submission that fails at any step leaves nothing
retrievable: its rows stay ``pending`` until the registry accepts it, and are removed otherwise.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Protocol

from lxml import etree

from xds import ebrim
from xds.errors import RegistryError, XdsError, registry_response
from xds.metadata import Submission
from xds.repository_store import RepositoryStore, blob_key_for
from xds.validation import validate_submission

log = logging.getLogger(__name__)


class DocumentContent(Protocol):
    """The bytes of one submitted document, already spooled to a file in the blob store."""

    path: os.PathLike
    sha1: str
    size: int


@dataclass
class SubmissionResult:
    status: str
    errors: list[RegistryError]

    def response(self) -> etree._Element:
        return registry_response(self.errors, status=self.status)


class DocumentRepository:
    def __init__(self, unique_id: str, store: RepositoryStore, blobstore, registry):
        self.unique_id = unique_id
        self.store = store
        self.blobstore = blobstore
        self.registry = registry

    async def provide_and_register(
        self,
        request: etree._Element,
        content: Callable[[etree._Element], DocumentContent],
    ) -> SubmissionResult:
        """Run ITI-41 on a ``xds:ProvideAndRegisterDocumentSetRequest``.

        ``content(document_element)`` returns the spooled bytes of one ``xds:Document``
        (inline base64 or an MTOM attachment).
        """
        try:
            submit = request.find(ebrim.q("lcm", "SubmitObjectsRequest"))
            if submit is None:
                raise XdsError("XDSRepositoryMetadataError",
                               "ProvideAndRegisterDocumentSetRequest holds no lcm:SubmitObjectsRequest")
            submission = Submission.parse(submit)
            documents = _documents_by_id(request)

            errors = _check_correspondence(submission, documents)
            errors += validate_submission(submission, role="repository")
            if _has_error(errors):
                return SubmissionResult(ebrim.FAILURE, errors)

            contents = {entry.entry_uuid: content(documents[entry.entry_uuid])
                        for entry in submission.document_entries}
            errors = self._enrich(submission, contents)
            if _has_error(errors):
                return SubmissionResult(ebrim.FAILURE, errors)

            return await self._store_and_register(submission, contents)
        except XdsError as exc:
            return SubmissionResult(ebrim.FAILURE, list(exc.errors))

    def _enrich(self, submission: Submission, contents: dict[str, DocumentContent]) -> list[RegistryError]:
        """Compare supplied hash and size with the bytes, then add hash, size and our id."""
        errors = []
        for entry in submission.document_entries:
            got = contents[entry.entry_uuid]

            supplied_hash = entry.slot("hash")
            if supplied_hash and supplied_hash[0].strip().lower() != got.sha1:
                errors.append(RegistryError(
                    "XDSRepositoryMetadataError",
                    f"hash {supplied_hash[0]!r} of DocumentEntry {entry.entry_uuid} does not match the "
                    f"SHA-1 of the document received ({got.sha1})",
                    location=entry.unique_id or entry.entry_uuid,
                ))
            supplied_size = entry.slot("size")
            if supplied_size and not _same_size(supplied_size[0], got.size):
                errors.append(RegistryError(
                    "XDSRepositoryMetadataError",
                    f"size {supplied_size[0]!r} of DocumentEntry {entry.entry_uuid} does not match the "
                    f"{got.size} bytes of the document received",
                    location=entry.unique_id or entry.entry_uuid,
                ))

            entry.set_slot("hash", [got.sha1])
            entry.set_slot("size", [str(got.size)])
            entry.set_slot("repositoryUniqueId", [self.unique_id])
        return errors

    async def _store_and_register(self, submission: Submission, contents) -> SubmissionResult:
        submission_key = uuid.uuid4().hex
        errors: list[RegistryError] = []
        reserved = []

        # Reserve every uniqueId first: the database constraint decides between racing submitters.
        for entry in submission.document_entries:
            got = contents[entry.entry_uuid]
            existing = self.store.reserve(entry.unique_id, entry.mime_type, got.sha1, got.size, submission_key)
            if existing is None:
                reserved.append(entry)
                continue
            if existing.size != got.size:
                errors.append(RegistryError(
                    "XDSNonIdenticalSize",
                    f"document {entry.unique_id} is already stored here with size {existing.size}, "
                    f"not {got.size}", location=entry.unique_id))
            elif existing.sha1 != got.sha1:
                errors.append(RegistryError(
                    "XDSNonIdenticalHash",
                    f"document {entry.unique_id} is already stored here with another hash",
                    location=entry.unique_id))
            # Identical bytes already stored: a resubmission, which the repository accepts.

        if errors:
            self._roll_back(submission_key)
            return SubmissionResult(ebrim.FAILURE, errors)

        try:
            for entry in reserved:
                self.blobstore.adopt(contents[entry.entry_uuid].path, blob_key_for(entry.unique_id))
        except OSError as exc:
            log.error("storing documents of submission %s failed: %s", submission_key, exc)
            self._roll_back(submission_key)
            return SubmissionResult(ebrim.FAILURE, [
                RegistryError("XDSRepositoryError", "the repository could not store the documents")])

        status, registry_errors = await self.registry.register(submission.request)
        if status != ebrim.SUCCESS:
            self._roll_back(submission_key)
            return SubmissionResult(ebrim.FAILURE, registry_errors or [
                RegistryError("XDSRegistryError", "the Document Registry refused the submission")])

        self.store.make_available(submission_key)
        log.info("ITI-41 stored and registered %d document(s): %s", len(submission.document_entries),
                 ", ".join(entry.unique_id for entry in submission.document_entries))
        return SubmissionResult(ebrim.SUCCESS, registry_errors)

    def clean_up_abandoned(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Remove what submissions left pending when their process died mid-way (never
        retrievable, but taking space and blocking their uniqueIds). Returns how many."""
        abandoned = self.store.stale_pending(older_than)
        for submission_key in abandoned:
            self._roll_back(submission_key)
        if abandoned:
            log.warning("removed documents of %d abandoned submission(s)", len(abandoned))
        return len(abandoned)

    def _roll_back(self, submission_key: str) -> None:
        for key in self.store.drop_pending(submission_key):
            self.blobstore.delete(key)


def _documents_by_id(request: etree._Element) -> dict[str, etree._Element]:
    documents: dict[str, etree._Element] = {}
    for document in request.findall(ebrim.q("xds", "Document")):
        document_id = document.get("id")
        if not document_id:
            raise XdsError("XDSRepositoryMetadataError", "an xds:Document has no id attribute")
        if document_id in documents:
            raise XdsError("XDSRepositoryMetadataError", f"two xds:Document elements have the id {document_id}",
                           location=document_id)
        documents[document_id] = document
    return documents


def _check_correspondence(submission: Submission, documents: dict[str, etree._Element]) -> list[RegistryError]:
    """One document per DocumentEntry and one DocumentEntry per document (ITI TF-2 3.41.4.1.3)."""
    errors = []
    entry_ids = {entry.entry_uuid for entry in submission.document_entries}
    for entry in submission.document_entries:
        if entry.entry_uuid not in documents:
            errors.append(RegistryError(
                "XDSMissingDocument",
                f"DocumentEntry {entry.entry_uuid} (uniqueId {entry.unique_id}) has no xds:Document",
                location=entry.unique_id or entry.entry_uuid))
    for document_id in documents:
        if document_id not in entry_ids:
            errors.append(RegistryError(
                "XDSMissingDocumentMetadata",
                f"xds:Document {document_id} matches no DocumentEntry (ExtrinsicObject id)",
                location=document_id))
    return errors


def _same_size(supplied: str, actual: int) -> bool:
    try:
        return int(supplied.strip()) == actual
    except ValueError:
        return False


def _has_error(errors: list[RegistryError]) -> bool:
    return any(error.severity == ebrim.SEVERITY_ERROR for error in errors)
