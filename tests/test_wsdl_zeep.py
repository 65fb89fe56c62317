"""The three WSDLs as an independent SOAP client sees them: zeep loads each from its file, finds
the operations with their actions, and builds requests that the official schemas accept.

zeep is given a transport that refuses every http(s) URL, so these tests also prove that a WSDL
and the XSDs it imports resolve from the files alone.
"""

from __future__ import annotations

from functools import cache

import pytest
import zeep
from lxml import etree
from zeep.helpers import serialize_object
from zeep.transports import Transport

from tests.conftest import ROOT
from tests.test_wsdl_schemas import (
    RIM,
    SOR,
    message_element,
    official_iti_schema,
    official_rad69_schema,
)

WSDL_DIR = ROOT / "wsdl"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
SOAP_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSAW = "http://www.w3.org/2006/05/addressing/wsdl"
WSP = "http://www.w3.org/ns/ws-policy"
WSOMA = "http://schemas.xmlsoap.org/ws/2004/09/policy/optimizedmimeserialization"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS = {"wsdl": WSDL_NS, "wsaw": WSAW, "wsp": WSP, "wsoma": WSOMA, "wsu": WSU,
      "soap12": "http://schemas.xmlsoap.org/wsdl/soap12/"}


class OfflineTransport(Transport):
    """Loads local files only; any attempt to fetch a URL fails the test."""

    def load(self, url):
        if url.startswith(("http:", "https:")):
            raise AssertionError(f"zeep tried to fetch {url}")
        return super().load(url)


@cache
def client(file_name: str) -> zeep.Client:
    return zeep.Client(wsdl=str(WSDL_DIR / file_name), transport=OfflineTransport())


def body_element(envelope: etree._Element) -> etree._Element:
    return envelope.find(f"{{{SOAP_ENV}}}Body")[0]


# (WSDL, service address, {operation: (input action, output action)}, MTOM policy?)
ENDPOINTS = [
    ("XDS.b_DocumentRepository.wsdl", "http://127.0.0.1:8080/xds/repository", {
        "DocumentRepository_ProvideAndRegisterDocumentSet-b": (
            "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
            "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"),
        "DocumentRepository_RetrieveDocumentSet": (
            "urn:ihe:iti:2007:RetrieveDocumentSet",
            "urn:ihe:iti:2007:RetrieveDocumentSetResponse"),
    }, True),
    ("XDS.b_DocumentRegistry.wsdl", "http://127.0.0.1:8080/xds/registry", {
        "DocumentRegistry_RegisterDocumentSet-b": (
            "urn:ihe:iti:2007:RegisterDocumentSet-b",
            "urn:ihe:iti:2007:RegisterDocumentSet-bResponse"),
        "DocumentRegistry_RegistryStoredQuery": (
            "urn:ihe:iti:2007:RegistryStoredQuery",
            "urn:ihe:iti:2007:RegistryStoredQueryResponse"),
    }, False),
    ("XDS-I.b_ImagingDocumentSource.wsdl", "http://127.0.0.1:8080/xdsi/imaging-source", {
        "ImagingDocumentSource_RetrieveImagingDocumentSet": (
            "urn:ihe:rad:2009:RetrieveImagingDocumentSet",
            "urn:ihe:iti:2007:RetrieveDocumentSetResponse"),
    }, True),
]
ENDPOINT_IDS = [wsdl for wsdl, *_ in ENDPOINTS]


@pytest.mark.parametrize("wsdl,address,operations,mtom", ENDPOINTS, ids=ENDPOINT_IDS)
def test_zeep_lists_operations_with_their_actions(wsdl, address, operations, mtom):
    (service,) = client(wsdl).wsdl.services.values()
    (port,) = service.ports.values()
    assert port.binding_options["address"] == address
    assert type(port.binding).__name__ == "Soap12Binding"

    found = port.binding._operations
    assert set(found) == set(operations)
    for name, (input_action, _) in operations.items():
        assert found[name].soapaction == input_action
        assert found[name].abstract.wsa_action == input_action
        assert found[name].style == "document"


@pytest.mark.parametrize("wsdl,address,operations,mtom", ENDPOINTS, ids=ENDPOINT_IDS)
def test_wsdl_declares_output_actions_addressing_and_mtom(wsdl, address, operations, mtom):
    """What zeep does not expose, read from the file: response actions, the required
    WS-Addressing marker and the MTOM policy attached to the binding."""
    definitions = etree.parse(str(WSDL_DIR / wsdl)).getroot()

    for name, (input_action, output_action) in operations.items():
        (operation,) = definitions.xpath(
            "wsdl:portType/wsdl:operation[@name=$name]", namespaces=NS, name=name)
        assert operation.find("wsdl:input", NS).get(f"{{{WSAW}}}Action") == input_action
        assert operation.find("wsdl:output", NS).get(f"{{{WSAW}}}Action") == output_action

    (binding,) = definitions.findall("wsdl:binding", NS)
    using_addressing = binding.find("wsaw:UsingAddressing", NS)
    assert using_addressing is not None
    assert using_addressing.get(f"{{{WSDL_NS}}}required") == "true"

    references = [ref.get("URI") for ref in binding.findall("wsp:PolicyReference", NS)]
    mtom_policies = {
        "#" + policy.get(f"{{{WSU}}}Id")
        for policy in definitions.findall("wsp:Policy", NS)
        if policy.find("wsoma:OptimizedMimeSerialization", NS) is not None
    }
    assert bool(set(references) & mtom_policies) == mtom


def test_zeep_builds_a_retrieve_request_the_official_schema_accepts():
    repository = client("XDS.b_DocumentRepository.wsdl")
    envelope = repository.create_message(
        repository.service, "DocumentRepository_RetrieveDocumentSet",
        DocumentRequest=[
            {"RepositoryUniqueId": "1.3.6.1.4.1.21367.13.80.110", "DocumentUniqueId": "1.2.3.4"},
            {"HomeCommunityId": "urn:oid:1.2.3",
             "RepositoryUniqueId": "1.3.6.1.4.1.21367.13.80.110",
             "DocumentUniqueId": "1.2.3.5"},
        ],
    )

    request = body_element(envelope)
    assert official_iti_schema().validate(request), official_iti_schema().error_log
    assert len(request) == 2
    assert envelope.findtext(f".//{{{WSA}}}Action") == "urn:ihe:iti:2007:RetrieveDocumentSet"


def _slot(name: str, *values: str) -> dict:
    return {"name": name, "ValueList": {"Value": list(values)}}


def test_zeep_builds_a_provide_and_register_request_with_nested_slots():
    """The zeep quirk of the official schemas (Slot, id and home dropped on a Classification
    nested in an ExtrinsicObject, rim:Identifiable written with xsi:type) does not occur with
    ours: the request keeps them and the official schema accepts it."""
    repository = client("XDS.b_DocumentRepository.wsdl")
    classification = {
        "id": "cl01", "classificationScheme": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
        "classifiedObject": "Document01", "nodeRepresentation": "DEMO-Consult",
        "Slot": [_slot("codingScheme", "1.3.6.1.4.1.21367.100.1")],
        "Name": {"LocalizedString": [{"value": "Consultation"}]},
    }
    extrinsic_object = {
        "id": "Document01", "mimeType": "text/plain",
        "objectType": "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
        "Slot": [_slot("creationTime", "20240102030405")],
        "Classification": [classification],
        "ExternalIdentifier": [{
            "id": "ei01", "registryObject": "Document01", "value": "1.2.3.4.5",
            "identificationScheme": "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
            "Name": {"LocalizedString": [{"value": "XDSDocumentEntry.uniqueId"}]},
        }],
    }
    envelope = repository.create_message(
        repository.service, "DocumentRepository_ProvideAndRegisterDocumentSet-b",
        SubmitObjectsRequest={"RegistryObjectList": {"_value_1": [
            {"ExtrinsicObject": extrinsic_object},
            {"ObjectRef": {"id": "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"}},
        ]}},
        Document=[{"id": "Document01", "_value_1": b"my document"}],
    )

    request = body_element(envelope)
    assert official_iti_schema().validate(request), official_iti_schema().error_log
    nested = request.find(f".//{{{RIM}}}ExtrinsicObject/{{{RIM}}}Classification")
    assert nested.get("id") == "cl01"
    assert nested.find(f"{{{RIM}}}Slot").get("name") == "codingScheme"
    assert request.find(f".//{{{RIM}}}Identifiable") is None


def test_zeep_builds_a_rad69_request_the_official_schema_accepts():
    source = client("XDS-I.b_ImagingDocumentSource.wsdl")
    envelope = source.create_message(
        source.service, "ImagingDocumentSource_RetrieveImagingDocumentSet",
        StudyRequest=[{"studyInstanceUID": "1.2.3", "SeriesRequest": [{
            "seriesInstanceUID": "1.2.3.4",
            "DocumentRequest": [{"RepositoryUniqueId": "1.3.6.1.4.1.21367.13.80.110",
                                 "DocumentUniqueId": "1.2.3.4.5"}],
        }]}],
        TransferSyntaxUIDList={
            "TransferSyntaxUID": ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"],
        },
    )

    request = body_element(envelope)
    assert official_rad69_schema().validate(request), official_rad69_schema().error_log
    assert envelope.findtext(f".//{{{WSA}}}Action") == "urn:ihe:rad:2009:RetrieveImagingDocumentSet"


def test_zeep_builds_a_stored_query_the_official_schema_accepts():
    registry = client("XDS.b_DocumentRegistry.wsdl")
    envelope = registry.create_message(
        registry.service, "DocumentRegistry_RegistryStoredQuery",
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", "Slot": [
            _slot("$XDSDocumentEntryPatientId", "'ID-1^^^&1.2.3&ISO'"),
            _slot("$XDSDocumentEntryStatus",
                  "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"),
        ]},
    )

    request = body_element(envelope)
    assert official_iti_schema().validate(request), official_iti_schema().error_log
    assert len(request.findall(f".//{{{RIM}}}Slot")) == 2


def test_zeep_reads_nested_slots_of_a_corpus_submission():
    """Parsing with our schemas keeps every Slot of the Classifications of a real submission."""
    submission = message_element(*SOR)
    expected = sum(
        len(classification.findall(f"{{{RIM}}}Slot"))
        for classification in submission.iter(f"{{{RIM}}}Classification")
    )
    assert expected > 0

    registry = client("XDS.b_DocumentRegistry.wsdl")
    element = registry.get_element(f"{{{LCM}}}SubmitObjectsRequest")
    parsed = element.parse(submission, registry.wsdl.types)

    assert _classification_slot_count(serialize_object(parsed)) == expected


def _classification_slot_count(value) -> int:
    """Slots of every Classification (the dicts with a classifiedObject) in a zeep result."""
    if isinstance(value, list):
        return sum(_classification_slot_count(item) for item in value)
    if not isinstance(value, dict):
        return 0
    own = len(value.get("Slot") or []) if "classifiedObject" in value else 0
    return own + sum(_classification_slot_count(item) for item in value.values())
