"""RAD-69 Retrieve Imaging Document Set: the Imaging Document Source serves archived instances.

The request names studies, series and instances (SOP Instance UIDs as DocumentUniqueIds) and the
transfer syntaxes the consumer accepts, in its order of preference. The answer has the ITI-43
form (RAD69-003): one DocumentResponse per served instance, one RegistryError per instance not
served with location = its SOP Instance UID (RAD69-019), and Success / PartialSuccess / Failure.

Error codes (ITI TF-3 Table 4.2.4.1-2; NIST ids_2018-4811 checks Failure and a non-empty error
list, and in case 05 the text "XDSIRequestError"):

- repository not ours -> XDSUnknownRepositoryId;
- instance unknown, or not in the series and study named -> XDSDocumentUniqueIdError;
- empty or malformed study, series or document UID -> XDSRepositoryError. IHE has no request
  error code for RAD-69, and a SOAP fault fails the NIST cases. NIST's own "XDSIRequestError" is
  not an IHE code, so it goes in the codeContext only: the text NIST looks for, the code IHE has;
- empty or unknown transfer syntax list, or no listed syntax producible for an instance ->
  XDSRepositoryError (RAD69-005 asks for an error and names no code). The WADO-WS codes
  (urn:dicom:wado:...) belong to PS3.18's own retrieve, not to an XDS RegistryResponse.

The bytes stream as the response is written: stored files straight from the blob store, and
transcoded instances one at a time, each encoded into a spool file when its part is reached. So
neither memory nor start-up time grows with the number of instances that need transcoding.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lxml import etree
from starlette.concurrency import run_in_threadpool

from dicom.transcode import (
    PixelInfo,
    choose_syntax,
    is_known,
    needs_pixel_info,
    transcode,
)
from soap.faults import SoapFault
from soap.service import SoapReply, SoapRequest
from xds import ebrim
from xds.errors import RegistryError
from xds.retrieve import DocumentRequest, RetrieveResult, parse_document_requests

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
CHUNK = 1 << 20
SPOOL_IN_MEMORY = 4 << 20  # a transcoded instance up to this size never touches the disk


def default_spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="rad69-")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


@dataclass
class InstanceRequest:
    """One xds:DocumentRequest with the study and series it was asked under."""

    study_uid: str
    series_uid: str
    document: DocumentRequest


class ImagingDocumentSource:
    def __init__(self, unique_id: str, archive, spool_factory: Callable[[], BinaryIO] = default_spool):
        self.unique_id = unique_id
        self.archive = archive
        self.spool_factory = spool_factory

    async def retrieve(self, request_element: etree._Element) -> RetrieveResult:
        """Answer an ``xdsi:RetrieveImagingDocumentSetRequest`` (index look-ups off the loop)."""
        return await run_in_threadpool(self.plan, request_element)

    def plan(self, request_element: etree._Element) -> RetrieveResult:
        """Decide, for every requested instance, what is sent (and in which syntax) or why not."""
        wanted = instance_requests(request_element)
        if not wanted:
            raise SoapFault("Sender", "RetrieveImagingDocumentSetRequest names no DocumentRequest")
        syntaxes = [(e.text or "").strip()
                    for e in request_element.iter(ebrim.q("xdsi", "TransferSyntaxUID"))]
        syntax_problem = transfer_syntax_problem(syntaxes)

        result = RetrieveResult()
        series_contents: dict[tuple[str, str], dict] = {}
        for item in wanted:
            problem = self._request_problem(item) or syntax_problem
            if problem:
                result.errors.append(RegistryError(*problem, location=item.document.document_unique_id))
                continue

            # One index query per requested series, not one per instance.
            key = (item.study_uid, item.series_uid)
            if key not in series_contents:
                records = self.archive.instances_of(*key)
                series_contents[key] = {record.sop_instance_uid: record for record in records}
            self._serve(item, series_contents[key].get(item.document.document_unique_id), syntaxes,
                        result)
        return result

    def _request_problem(self, item: InstanceRequest) -> tuple[str, str] | None:
        document = item.document
        if document.repository_unique_id != self.unique_id:
            context = (f"repository {document.repository_unique_id!r} is not this Imaging "
                       f"Document Source ({self.unique_id})")
            return "XDSUnknownRepositoryId", context
        for name, value in (("studyInstanceUID", item.study_uid),
                            ("seriesInstanceUID", item.series_uid),
                            ("DocumentUniqueId", document.document_unique_id)):
            if not is_valid_uid(value):
                return "XDSRepositoryError", f"XDSIRequestError: {name} {value!r} is empty or not a UID"
        return None

    def _serve(self, item: InstanceRequest, instance, syntaxes: list[str],
               result: RetrieveResult) -> None:
        sop_uid = item.document.document_unique_id
        if instance is None:  # unknown, or not in the series and study named
            result.errors.append(RegistryError(
                "XDSDocumentUniqueIdError",
                f"instance {sop_uid} is not held in series {item.series_uid} of study {item.study_uid}",
                location=sop_uid))
            return

        stored = instance.transfer_syntax_uid
        info = self._pixel_info(instance.blob_key) if needs_pixel_info(stored, syntaxes) else None
        chosen = choose_syntax(stored, syntaxes, info)
        if chosen is None:
            result.errors.append(RegistryError(
                "XDSRepositoryError",
                f"instance {sop_uid} is stored in {stored} and cannot be encoded losslessly in any "
                f"requested transfer syntax ({', '.join(syntaxes)})",
                location=sop_uid))
            return

        if chosen == stored:
            content = self._stored_content(instance.blob_key)
        else:
            content = self._transcoded(instance.blob_key, chosen, sop_uid)
        result.served.append((item.document, ebrim.MIME_DICOM, content))

    def _pixel_info(self, blob_key: str) -> PixelInfo:
        with self.archive.blobstore.open(blob_key) as source:
            return PixelInfo.read(source)

    def _stored_content(self, blob_key: str) -> Path | Iterator[bytes]:
        blobstore = self.archive.blobstore
        if hasattr(blobstore, "path"):
            return blobstore.path(blob_key)
        return blobstore.iter_bytes(blob_key)

    def _transcoded(self, blob_key: str, target: str, sop_uid: str) -> Iterator[bytes]:
        """The instance in ``target``, encoded only when the response reaches its part."""
        spool = self.spool_factory()
        try:
            with self.archive.blobstore.open(blob_key) as source:
                transcode(source, target, spool)
            spool.seek(0)
            while chunk := spool.read(CHUNK):
                yield chunk
        except Exception:
            # The response has promised this part, so the stream can only be cut: say why.
            log.exception("RAD-69: transcoding instance %s to %s failed mid-response", sop_uid, target)
            raise
        finally:
            spool.close()  # also when the client leaves mid-part (the generator is closed)


def instance_requests(request_element: etree._Element) -> list[InstanceRequest]:
    wanted = []
    for study in request_element.findall(ebrim.q("xdsi", "StudyRequest")):
        study_uid = (study.get("studyInstanceUID") or "").strip()
        for series in study.findall(ebrim.q("xdsi", "SeriesRequest")):
            series_uid = (series.get("seriesInstanceUID") or "").strip()
            for document in parse_document_requests(series):
                wanted.append(InstanceRequest(study_uid, series_uid, document))
    return wanted


def transfer_syntax_problem(syntaxes: list[str]) -> tuple[str, str] | None:
    if not syntaxes or any(not value for value in syntaxes):
        return ("XDSRepositoryError",
                "TransferSyntaxUIDList is empty or holds an empty TransferSyntaxUID")
    if not any(is_valid_uid(value) and is_known(value) for value in syntaxes):
        return ("XDSRepositoryError",
                f"no requested transfer syntax is a DICOM transfer syntax: {', '.join(syntaxes)}")
    return None


def rad69_handler(source: ImagingDocumentSource) -> Callable[[SoapRequest], Awaitable[SoapReply]]:
    async def handler(request: SoapRequest) -> SoapReply:
        body = request.envelope.body
        if body.tag != ebrim.q("xdsi", "RetrieveImagingDocumentSetRequest"):
            raise SoapFault("Sender",
                            f"the Body must hold xdsi:RetrieveImagingDocumentSetRequest, not {body.tag}")
        result = await source.retrieve(body)
        response, parts = result.response()
        return SoapReply(ebrim.RAD69_RESPONSE_ACTION, response, parts)

    return handler
