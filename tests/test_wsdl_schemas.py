"""The project's own XSDs (``schemas/``) against the official ones, judged by behaviour.

Every sample message of the public corpus that the official schemas accept must be accepted by
ours, and deliberately broken messages must be refused by both. The official schemas are read in
place (IHE's ebRS/XDS.b copy for ITI messages, dcm4che's copy for RAD-69); the only network
reference they hold, the W3C ``xml.xsd``, is resolved to the local W3C copy.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import CORPUS, ROOT, SCHEMAS

OUR_SCHEMAS = ROOT / "schemas"

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XDS = "urn:ihe:iti:xds-b:2007"
XDSI = "urn:ihe:rad:xdsi-b:2009"
XOP_INCLUDE = "{http://www.w3.org/2004/08/xop/include}Include"


# Schemas ----------------------------------------------------------------------------------------

class _LocalXmlNamespaceSchema(etree.Resolver):
    """Maps the W3C schema of the xml: namespace, which IHE's rim.xsd names by URL, to a file."""

    def resolve(self, url, public_id, context):
        if url == "http://www.w3.org/2001/xml.xsd":
            return self.resolve_filename(str(SCHEMAS / "w3c-oasis" / "xml.xsd"), context)
        return None


def _compile(path: Path) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False)
    parser.resolvers.add(_LocalXmlNamespaceSchema())
    return etree.XMLSchema(etree.parse(str(path), parser))


@cache
def official_iti_schema() -> etree.XMLSchema:
    """IHE's XDS.b_DocumentRepository.xsd, which imports rim, rs, lcm and query."""
    return _compile(SCHEMAS / "ihe-iti" / "schema" / "IHE" / "XDS.b_DocumentRepository.xsd")


@cache
def official_rad69_schema() -> etree.XMLSchema:
    return _compile(
        SCHEMAS / "dcm4che-xdsi" / "schema" / "IHE" / "XDSI.b_ImagingDocumentSource.xsd"
    )


@cache
def our_iti_schema() -> etree.XMLSchema:
    return _compile(OUR_SCHEMAS / "xds-b.xsd")


@cache
def our_rad69_schema() -> etree.XMLSchema:
    return _compile(OUR_SCHEMAS / "xdsi-b.xsd")


def schemas_for(element: etree._Element) -> tuple[etree.XMLSchema, etree.XMLSchema]:
    """(official, ours) for a message element."""
    if etree.QName(element).namespace == XDSI:
        return official_rad69_schema(), our_rad69_schema()
    return official_iti_schema(), our_iti_schema()


def verdict(schema: etree.XMLSchema, element: etree._Element) -> tuple[bool, str]:
    valid = schema.validate(element)
    return valid, "" if valid else str(schema.error_log.last_error)


# Extracting message elements from the corpus files ----------------------------------------------

# (file, local name of the message element to validate). Every file of the corpus that holds a
# well-formed XDS or RAD-69 message element is listed; the others are MIME headers, test plans,
# DICOM files, an ebXML 2.1 message or a deliberately malformed XML sample.
CORPUS_MESSAGES = [
    ("dcm4cheecs-rad69-request.txt", "RetrieveImagingDocumentSetRequest"),
    ("dcm4cheexds-RegisterTwoDocuments.xml", "SubmitObjectsRequest"),
    ("dcm4cheexds-ResubmitInitialDoc.xml", "SubmitObjectsRequest"),
    ("dcm4cheexds-ResubmitWrongHash.xml", "SubmitObjectsRequest"),
    ("gematik-provideandregister.xop", "ProvideAndRegisterDocumentSetRequest"),
    ("gematik-retrievedocument-resp.xop", "RetrieveDocumentSetResponse"),
    ("ipf-continua-ProvideAndRegisterDocumentSet.xml", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-Bill-msg.txt", "RegistryResponse"),
    ("nist-PnrXop-NoXop-body.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-PnrXop-Xop-body.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-PnrXop-dicom-body.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-PnrXop-encodedURL-body.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-http-mtom-pnr.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-http-simple.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-pnr-bad-uplink.xml", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-regresp-suc-err.xml", "RegistryResponse"),
    ("nist-selftest-socket-request.txt", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-soap-noaction-pnr.xml", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-soap-pnr-soap-order.xml", "ProvideAndRegisterDocumentSetRequest"),
    ("nist-soap-ret-req.xml", "RetrieveDocumentSetRequest"),
    ("nist-ids_2018-4803b-rad69-request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-ids_2018-4811-case-01-rad69-request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-ids_2018-4811-case-05-rad69-request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-ids_2018-4811-case-09-rad69-request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-ids_4820-case-1-RAD-69Request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-iig_5401-RAD-69Request.xml", "RetrieveImagingDocumentSetRequest"),
    ("nist-iig_5403-RAD-69Request.xml", "RetrieveImagingDocumentSetRequest"),
]

# Where an XML document may begin inside an HTTP request, a MIME package or a bare file.
_XML_START = re.compile(rb"<\?xml|<(?:[\w.-]+:)?(?:Envelope|[A-Z]\w+Request|RegistryResponse)\b")
_MIME_BOUNDARY_LINE = re.compile(rb"\r?\n--[^\r\n]+")


def message_element(file_name: str, local_name: str) -> etree._Element:
    """The first ``local_name`` element of a corpus file, as a standalone element.

    Crude on purpose: try each place where XML may start, cut at the next MIME boundary line,
    and keep the first piece that parses. XOP includes become a short base64 text, as a receiver
    resolves them before validation.
    """
    data = (CORPUS / file_name).read_bytes()
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False)

    for start in _XML_START.finditer(data):
        piece = data[start.start():]
        boundary = _MIME_BOUNDARY_LINE.search(piece)
        if boundary:
            piece = piece[:boundary.start()]
        try:
            root = etree.fromstring(piece, parser)
        except etree.XMLSyntaxError:
            continue

        for element in root.iter(f"{{*}}{local_name}"):
            element = copy.deepcopy(element)
            for include in list(element.iter(XOP_INCLUDE)):
                holder = include.getparent()
                holder.remove(include)
                holder.text = "QUJD"
            return element

    raise AssertionError(f"no well-formed {local_name} found in {file_name}")


# Tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["xml", "rim", "rs", "lcm", "query", "xds-b", "xdsi-b"])
def test_every_schema_compiles(name):
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False)
    etree.XMLSchema(etree.parse(str(OUR_SCHEMAS / f"{name}.xsd"), parser))


@pytest.mark.parametrize("file_name,local_name", CORPUS_MESSAGES)
def test_corpus_message_valid_against_official_is_valid_against_ours(file_name, local_name):
    element = message_element(file_name, local_name)
    official, ours = schemas_for(element)

    # The corpus files listed are all valid XDS; if the oracle disagrees, the list is wrong.
    official_valid, official_error = verdict(official, element)
    assert official_valid, f"official schema refuses {file_name}: {official_error}"

    ours_valid, our_error = verdict(ours, element)
    assert ours_valid, f"our schema refuses {file_name}: {our_error}"


# Deliberately broken messages: each mutation is applied to a valid corpus message.

def _rim(element, local):
    return element.find(f".//{{{RIM}}}{local}")


def _name_before_slot(root):
    extrinsic = _rim(root, "ExtrinsicObject")
    name = extrinsic.find(f"{{{RIM}}}Name")
    extrinsic.remove(name)
    extrinsic.insert(0, name)  # Slots come first in every registry object


def _classification_without_classified_object(root):
    del _rim(root, "Classification").attrib["classifiedObject"]


def _extrinsic_object_without_id(root):
    del _rim(root, "ExtrinsicObject").attrib["id"]


def _unknown_element_in_registry_object_list(root):
    etree.SubElement(_rim(root, "RegistryObjectList"), f"{{{RIM}}}Unknown", id="urn:uuid:1")


def _external_identifier_without_value(root):
    del _rim(root, "ExternalIdentifier").attrib["value"]


def _slot_without_value_list(root):
    slot = _rim(root, "Slot")
    slot.remove(slot.find(f"{{{RIM}}}ValueList"))


def _classification_after_external_identifier(root):
    extrinsic = _rim(root, "ExtrinsicObject")
    classification = extrinsic.find(f"{{{RIM}}}Classification")
    extrinsic.remove(classification)
    extrinsic.append(classification)


def _document_without_id(root):
    del root.find(f"{{{XDS}}}Document").attrib["id"]


def _document_before_metadata(root):
    document = root.find(f"{{{XDS}}}Document")
    root.remove(document)
    root.insert(0, document)


def _registry_response_without_status(root):
    del root.attrib["status"]


def _registry_error_without_error_code(root):
    del root.find(f".//{{{RS}}}RegistryError").attrib["errorCode"]


def _retrieve_without_repository_id(root):
    request = root.find(f"{{{XDS}}}DocumentRequest")
    request.remove(request.find(f"{{{XDS}}}RepositoryUniqueId"))


def _rad69_study_without_uid(root):
    del root.find(f"{{{XDSI}}}StudyRequest").attrib["studyInstanceUID"]


def _rad69_document_request_in_rad_namespace(root):
    request = root.find(f".//{{{XDS}}}DocumentRequest")
    request.tag = f"{{{XDSI}}}DocumentRequest"
    for child in request:
        child.tag = f"{{{XDSI}}}{etree.QName(child).localname}"


def _rad69_without_transfer_syntax_list(root):
    root.remove(root.find(f"{{{XDSI}}}TransferSyntaxUIDList"))


PNR = ("nist-PnrXop-Xop-body.txt", "ProvideAndRegisterDocumentSetRequest")
SOR = ("dcm4cheexds-RegisterTwoDocuments.xml", "SubmitObjectsRequest")
REGISTRY_RESPONSE = ("nist-regresp-suc-err.xml", "RegistryResponse")
RETRIEVE = ("nist-soap-ret-req.xml", "RetrieveDocumentSetRequest")
RAD69 = ("nist-iig_5401-RAD-69Request.xml", "RetrieveImagingDocumentSetRequest")

BROKEN = [
    (PNR, _name_before_slot),
    (SOR, _name_before_slot),
    (PNR, _classification_without_classified_object),
    (SOR, _extrinsic_object_without_id),
    (PNR, _unknown_element_in_registry_object_list),
    (SOR, _external_identifier_without_value),
    (PNR, _slot_without_value_list),
    (SOR, _classification_after_external_identifier),
    (PNR, _document_without_id),
    (PNR, _document_before_metadata),
    (REGISTRY_RESPONSE, _registry_response_without_status),
    (REGISTRY_RESPONSE, _registry_error_without_error_code),
    (RETRIEVE, _retrieve_without_repository_id),
    (RAD69, _rad69_study_without_uid),
    (RAD69, _rad69_document_request_in_rad_namespace),
    (RAD69, _rad69_without_transfer_syntax_list),
]


@pytest.mark.parametrize(
    "source,mutation", BROKEN, ids=[f"{m.__name__.strip('_')}-{s[1]}" for s, m in BROKEN]
)
def test_broken_message_is_invalid_against_both(source, mutation):
    element = message_element(*source)
    official, ours = schemas_for(element)
    assert official.validate(element), "the unbroken message must be valid to begin with"
    assert ours.validate(element), "the unbroken message must be valid to begin with"

    mutation(element)

    assert not official.validate(element), "the official schema accepts the broken message"
    assert not ours.validate(element), "our schema accepts the broken message"


@pytest.mark.parametrize("local_name,attributes", [
    ("ExternalLink", {"externalURI": "http://example.org/"}),
    ("Identifiable", {}),
])
def test_non_xds_registry_objects_are_outside_our_subset(local_name, attributes):
    """A deliberate difference: registry objects that XDS never exchanges (an ExternalLink, or
    the substitution-group head rim:Identifiable itself) are valid for the full OASIS schema but
    not for ours, whose RegistryObjectList is a choice of the six objects XDS uses."""
    element = message_element(*SOR)
    etree.SubElement(
        _rim(element, "RegistryObjectList"), f"{{{RIM}}}{local_name}",
        id="urn:uuid:6f1c1e52-3b3c-4f3e-9d7e-1c2b3a4d5e6f", **attributes,
    )
    assert official_iti_schema().validate(element)
    assert not our_iti_schema().validate(element)


def test_retrieve_response_fields_and_order():
    """An ITI-43 answer with every DocumentResponse field (iti43.md), in order, is valid for both
    schemas; with mimeType after Document it is invalid for both."""
    response = etree.fromstring(
        f'<xds:RetrieveDocumentSetResponse xmlns:xds="{XDS}" xmlns:rs="{RS}">'
        '<rs:RegistryResponse status="urn:ihe:iti:2007:ResponseStatusType:PartialSuccess">'
        "<rs:RegistryErrorList>"
        '<rs:RegistryError errorCode="XDSDocumentUniqueIdError" codeContext="unknown document"'
        ' location="1.2.3.9" severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>'
        "</rs:RegistryErrorList></rs:RegistryResponse>"
        "<xds:DocumentResponse><xds:HomeCommunityId>urn:oid:1.2.3</xds:HomeCommunityId>"
        "<xds:RepositoryUniqueId>1.2.3</xds:RepositoryUniqueId>"
        "<xds:DocumentUniqueId>1.2.3.4</xds:DocumentUniqueId>"
        "<xds:NewRepositoryUniqueId>1.2.3</xds:NewRepositoryUniqueId>"
        "<xds:NewDocumentUniqueId>1.2.3.5</xds:NewDocumentUniqueId>"
        "<xds:mimeType>application/dicom</xds:mimeType><xds:Document>QUJD</xds:Document>"
        "</xds:DocumentResponse></xds:RetrieveDocumentSetResponse>"
    )
    assert official_iti_schema().validate(response), official_iti_schema().error_log
    assert our_iti_schema().validate(response), our_iti_schema().error_log

    document_response = response.find(f"{{{XDS}}}DocumentResponse")
    mime_type = document_response.find(f"{{{XDS}}}mimeType")
    document_response.remove(mime_type)
    document_response.append(mime_type)
    assert not official_iti_schema().validate(response)
    assert not our_iti_schema().validate(response)
