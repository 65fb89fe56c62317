"""XDS error codes, the coded exception, and the rs:RegistryResponse that carries them.

The tree::

    Exception
     └─ XdsError            one or more RegistryError; business errors of ITI-41/42/43/18
                            that travel back in a RegistryResponse, never as SOAP faults

``RegistryError`` is one ``rs:RegistryError`` entry (errorCode, codeContext, location,
severity). ``registry_response`` builds the response element from a list of them and
``parse_registry_response`` reads one back.

References: ITI TF-3 4.2.4 (Table 4.2.4.1-2 error codes, 4.2.4.2 status), ebRS 3.0 ``rs.xsd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lxml import etree
from lxml.etree import _Element

from xds import ebrim


class ErrorCode(StrEnum):
    """Error codes of ITI TF-3 Table 4.2.4.1-2, spelled as the Technical Framework spells them."""

    XDSMissingDocument = "XDSMissingDocument"
    XDSMissingDocumentMetadata = "XDSMissingDocumentMetadata"
    XDSRepositoryMetadataError = "XDSRepositoryMetadataError"
    XDSRegistryMetadataError = "XDSRegistryMetadataError"
    XDSRepositoryDuplicateUniqueIdInMessage = "XDSRepositoryDuplicateUniqueIdInMessage"
    XDSRegistryDuplicateUniqueIdInMessage = "XDSRegistryDuplicateUniqueIdInMessage"
    XDSDuplicateUniqueIdInRegistry = "XDSDuplicateUniqueIdInRegistry"
    XDSNonIdenticalHash = "XDSNonIdenticalHash"
    XDSNonIdenticalSize = "XDSNonIdenticalSize"
    XDSPatientIdDoesNotMatch = "XDSPatientIdDoesNotMatch"
    XDSUnknownPatientId = "XDSUnknownPatientId"
    XDSRegistryNotAvailable = "XDSRegistryNotAvailable"
    XDSRegistryBusy = "XDSRegistryBusy"
    XDSRepositoryBusy = "XDSRepositoryBusy"
    XDSRegistryOutOfResources = "XDSRegistryOutOfResources"
    XDSRepositoryOutOfResources = "XDSRepositoryOutOfResources"
    XDSRegistryError = "XDSRegistryError"
    XDSRepositoryError = "XDSRepositoryError"
    XDSRegistryDeprecatedDocumentError = "XDSRegistryDeprecatedDocumentError"
    UnresolvedReferenceException = "UnresolvedReferenceException"
    XDSExtraMetadataNotSaved = "XDSExtraMetadataNotSaved"
    InvalidDocumentContent = "InvalidDocumentContent"
    XDSDocumentUniqueIdError = "XDSDocumentUniqueIdError"
    XDSUnknownRepositoryId = "XDSUnknownRepositoryId"
    XDSTooManyResults = "XDSTooManyResults"
    XDSStoredQueryParamNumber = "XDSStoredQueryParamNumber"
    XDSUnknownStoredQuery = "XDSUnknownStoredQuery"
    XDSStoredQueryMissingParam = "XDSStoredQueryMissingParam"


@dataclass
class RegistryError:
    """One ``rs:RegistryError``: what went wrong (code), in words (context) and where (location)."""

    error_code: str
    code_context: str
    location: str | None = None
    severity: str = ebrim.SEVERITY_ERROR

    @property
    def is_error(self) -> bool:
        """True for Error severity (anything that is not a Warning counts as an error)."""
        return self.severity != ebrim.SEVERITY_WARNING


class XdsError(Exception):
    """A business error that ends a transaction with a Failure RegistryResponse.

    ``XdsError(error_code, code_context, location=None)`` carries one error; use
    ``XdsError.of(errors)`` to raise several at once. ``.errors`` is always a list.
    """

    def __init__(self, error_code: str, code_context: str, location: str | None = None) -> None:
        super().__init__(f"{error_code}: {code_context}")
        self.errors: list[RegistryError] = [RegistryError(error_code, code_context, location)]

    @classmethod
    def of(cls, errors: list[RegistryError]) -> XdsError:
        """An XdsError carrying ``errors`` (at least one)."""
        if not errors:
            raise ValueError("XdsError needs at least one RegistryError")
        first = errors[0]
        exc = cls(first.error_code, first.code_context, first.location)
        exc.errors = list(errors)
        return exc


def effective_status(status: str, errors: list[RegistryError]) -> str:
    """The status a receiver should act on.

    A response that says Success while it lists Error-severity entries (seen from a public
    registry, corpus ``nist-regresp-suc-err.xml``) is inconsistent; it counts as Failure so
    that nothing is reported as registered when it may not be.
    """
    if status == ebrim.SUCCESS and any(error.is_error for error in errors):
        return ebrim.FAILURE
    return status


def _highest_severity(errors: list[RegistryError]) -> str:
    if any(error.is_error for error in errors):
        return ebrim.SEVERITY_ERROR
    return ebrim.SEVERITY_WARNING


def append_error_list(parent: _Element, errors: list[RegistryError]) -> None:
    """Add ``rs:RegistryErrorList`` with ``errors`` to a RegistryResponse-typed element."""
    if not errors:
        return
    error_list = etree.SubElement(parent, ebrim.q("rs", "RegistryErrorList"))
    error_list.set("highestSeverity", _highest_severity(errors))
    for error in errors:
        item = etree.SubElement(error_list, ebrim.q("rs", "RegistryError"))
        item.set("errorCode", str(error.error_code))
        item.set("codeContext", error.code_context)
        item.set("severity", error.severity)
        if error.location:
            item.set("location", error.location)


def registry_response(errors: list[RegistryError], status: str | None = None) -> _Element:
    """Build ``rs:RegistryResponse``.

    Parameters
    ----------
    errors : list of RegistryError
        Errors and warnings to report; may be empty.
    status : str, optional
        A status URN. When omitted it is derived: Failure if any entry has Error severity,
        else Success (ITI-41 and ITI-42 have no PartialSuccess).

    Returns
    -------
    lxml element, schema-valid against ``rs.xsd``.
    """
    if status is None:
        status = ebrim.FAILURE if any(error.is_error for error in errors) else ebrim.SUCCESS

    response = etree.Element(ebrim.q("rs", "RegistryResponse"), nsmap={"rs": ebrim.RS})
    response.set("status", status)
    append_error_list(response, errors)
    return response


def parse_errors(element: _Element) -> list[RegistryError]:
    """The RegistryError entries of any RegistryResponse-typed element (also AdhocQueryResponse)."""
    errors = []
    for item in element.iterfind(
        f"{ebrim.q('rs', 'RegistryErrorList')}/{ebrim.q('rs', 'RegistryError')}"
    ):
        errors.append(
            RegistryError(
                error_code=item.get("errorCode", ""),
                code_context=item.get("codeContext", ""),
                location=item.get("location"),
                # rs.xsd gives Error as the default severity when the attribute is absent.
                severity=item.get("severity", ebrim.SEVERITY_ERROR),
            )
        )
    return errors


def parse_registry_response(element: _Element) -> tuple[str, list[RegistryError]]:
    """Read a RegistryResponse: ``(status, errors)``.

    The status returned is the *effective* one (see ``effective_status``): a Success that
    lists Error-severity entries comes back as Failure. The raw value stays readable as
    ``element.get("status")``.

    Raises
    ------
    ValueError
        The element is not a response of the ebRS ``RegistryResponseType`` family or has no
        status attribute.
    """
    if etree.QName(element).namespace not in (ebrim.RS, ebrim.QUERY):
        raise ValueError(f"not an ebRS response element: {element.tag}")
    status = element.get("status")
    if not status:
        raise ValueError("RegistryResponse without the required status attribute")

    errors = parse_errors(element)
    return effective_status(status, errors), errors
