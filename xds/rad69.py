"""RAD-69 Retrieve Imaging Document Set: the Imaging Document Source serves archived instances.

The request names studies, series and instances (SOP Instance UIDs as DocumentUniqueIds) and the
transfer syntaxes the consumer accepts, in its order of preference. The answer has the ITI-43
form (RAD69-003): one DocumentResponse per served instance, an error per instance not served
with location = its SOP Instance UID (RAD69-019), and Success / PartialSuccess / Failure.

Error choices (NIST ids_4812 checks status and a non-empty error list; the codes follow ITI TF-3
Table 4.2.4.1-2): repository not ours -> XDSUnknownRepositoryId; instance unknown or not in the
named series and study -> XDSDocumentUniqueIdError; empty or malformed UIDs, an empty or unusable
transfer syntax list, or no listed syntax producible for an instance -> XDSRepositoryError, since
IHE defines no more specific code for these and a SOAP fault would fail the NIST tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree
from starlette.concurrency import run_in_threadpool

from dicom.transcode import choose_syntax, is_known, transcoded_chunks
from soap.faults import SoapFault
from soap.service import SoapReply, SoapRequest
from xds import ebrim
from xds.errors import RegistryError
from xds.retrieve import RetrieveResult, parse_document_requests

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and UID.match(value) is not None


@dataclass
class _InstanceRequest:
    study_uid: str
    series_uid: str
    document: object  # xds.retrieve.DocumentRequest


class ImagingDocumentSource:
    def __init__(self, unique_id: str, archive):
        self.unique_id = unique_id
        self.archive = archive

    def retrieve(self, request: etree._Element) -> RetrieveResult:
        """Answer an ``xdsi:RetrieveImagingDocumentSetRequest``."""
        wanted = _instance_requests(request)
        if not wanted:
            raise SoapFault("Sender", "RetrieveImagingDocumentSetRequest names no DocumentRequest")
        syntaxes = [(e.text or "").strip() for e in request.iter(ebrim.q("xdsi", "TransferSyntaxUID"))]

        result = RetrieveResult()
        syntax_problem = _syntax_list_problem(syntaxes)
        series_contents: dict[tuple[str, str], dict] = {}
        for item in wanted:
            document = item.document
            error = syntax_problem or self._request_problem(item)
            if error:
                result.errors.append(RegistryError(error[0], error[1], location=document.document_unique_id))
                continue
            # One index query per requested series, not per instance.
            key = (item.study_uid, item.series_uid)
            if key not in series_contents:
                series_contents[key] = {i.sop_instance_uid: i for i in self.archive.instances_of(*key)}
            self._serve(item, series_contents[key].get(document.document_unique_id), syntaxes, result)
        return result

    def _request_problem(self, item: _InstanceRequest) -> tuple[str, str] | None:
        document = item.document
        for name, value in (("studyInstanceUID", item.study_uid), ("seriesInstanceUID", item.series_uid),
                            ("DocumentUniqueId", document.document_unique_id)):
            if not _valid_uid(value):
                return "XDSRepositoryError", f"{name} {value!r} is empty or not a valid UID"
        if document.repository_unique_id != self.unique_id:
            return ("XDSUnknownRepositoryId",
                    f"repository {document.repository_unique_id!r} is not this Imaging Document Source "
                    f"({self.unique_id})")
        return None

    def _serve(self, item: _InstanceRequest, instance, syntaxes: list[str], result: RetrieveResult) -> None:
        document = item.document
        if instance is None:  # unknown, or not in the series and study named
            result.errors.append(RegistryError(
                "XDSDocumentUniqueIdError",
                f"instance {document.document_unique_id} is not held in series {item.series_uid} of study "
                f"{item.study_uid}", location=document.document_unique_id))
            return

        chosen = choose_syntax(instance.transfer_syntax_uid, syntaxes)
        if chosen is None:
            result.errors.append(RegistryError(
                "XDSRepositoryError",
                f"instance {document.document_unique_id} is stored in {instance.transfer_syntax_uid} and cannot "
                f"be encoded in any requested transfer syntax ({', '.join(syntaxes)})",
                location=document.document_unique_id))
            return

        path = self.archive.blobstore.path(instance.blob_key)
        content = path if chosen == instance.transfer_syntax_uid else transcoded_chunks(path, chosen)
        result.served.append((document, ebrim.MIME_DICOM, content))


def _instance_requests(request: etree._Element) -> list[_InstanceRequest]:
    wanted = []
    for study in request.findall(ebrim.q("xdsi", "StudyRequest")):
        study_uid = (study.get("studyInstanceUID") or "").strip()
        for series in study.findall(ebrim.q("xdsi", "SeriesRequest")):
            series_uid = (series.get("seriesInstanceUID") or "").strip()
            for document in parse_document_requests(series):
                wanted.append(_InstanceRequest(study_uid, series_uid, document))
    return wanted


def _syntax_list_problem(syntaxes: list[str]) -> tuple[str, str] | None:
    if not syntaxes or any(not value for value in syntaxes):
        return "XDSRepositoryError", "TransferSyntaxUIDList is empty or holds an empty TransferSyntaxUID"
    if not any(is_known(value) for value in syntaxes if _valid_uid(value)):
        return "XDSRepositoryError", f"no requested transfer syntax is a DICOM transfer syntax: {', '.join(syntaxes)}"
    return None


def rad69_handler(source: ImagingDocumentSource):
    async def handler(request: SoapRequest) -> SoapReply:
        body = request.envelope.body
        if body.tag != ebrim.q("xdsi", "RetrieveImagingDocumentSetRequest"):
            raise SoapFault("Sender", f"the Body must hold xdsi:RetrieveImagingDocumentSetRequest, not {body.tag}")
        result = await run_in_threadpool(source.retrieve, body)
        response, parts = result.response()
        return SoapReply(ebrim.RAD69_RESPONSE_ACTION, response, parts)

    return handler
