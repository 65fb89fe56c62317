"""Hardened XML parsing, the SOAP 1.2 envelope and WS-Addressing rules, and fault envelopes.

Fault envelopes are validated against the official W3C SOAP 1.2 envelope schema and the
WS-Addressing 1.0 schema, read in place from the shared reference schemas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import cache

import pytest
from lxml import etree

from soap.envelope import build_envelope, parse_envelope
from soap.faults import SoapFault, parse_fault
from soap.mtom import read_message
from soap.spool import Spool
from soap.xml import SOAP12_ENV, WSA, XmlError, parse_xml
from tests import corpus
from tests.conftest import SCHEMAS

ENV = SOAP12_ENV
HEAD = f'<e:Envelope xmlns:e="{ENV}" xmlns:wsa="{WSA}"><e:Header>'
BODY = "</e:Header><e:Body><x:Ping xmlns:x='urn:test'/></e:Body></e:Envelope>"
ACTION = '<wsa:Action e:mustUnderstand="true">urn:test:Ping</wsa:Action>'
MESSAGE_ID = "<wsa:MessageID>urn:uuid:0e9b6a1c-1111-4222-8333-444455556666</wsa:MessageID>"


def envelope(headers: str) -> etree._Element:
    return parse_xml((HEAD + headers + BODY).encode())


def fault_of(root: etree._Element, **kwargs) -> SoapFault:
    with pytest.raises(SoapFault) as caught:
        parse_envelope(root, **kwargs)
    return caught.value


# Hardened XML -----------------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("SECRET-7f3a91-do-not-leak")
    return path


def xxe_documents(secret_path) -> dict[str, bytes]:
    url = secret_path.as_uri()
    soap = f'<e:Envelope xmlns:e="{ENV}"><e:Body><a>&s;</a></e:Body></e:Envelope>'
    return {
        "utf-8": f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY s SYSTEM "{url}">]>{soap}'.encode(),
        "after-a-comment": f'<!-- hi --><!DOCTYPE e [<!ENTITY s SYSTEM "{url}">]>{soap}'.encode(),
        "utf-16": f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE e [<!ENTITY s SYSTEM "{url}">]>'
        f"{soap}".encode("utf-16"),
        "utf-32": f'<?xml version="1.0" encoding="UTF-32"?><!DOCTYPE e [<!ENTITY s SYSTEM "{url}">]>'
        f"{soap}".encode("utf-32"),
        "parameter-entity": f'<!DOCTYPE e [<!ENTITY % p SYSTEM "{url}"> %p;]>{soap.replace("&s;", "")}'.encode(),
    }


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize(
    "variant", ["utf-8", "after-a-comment", "utf-16", "utf-32", "parameter-entity"]
)
def test_external_entity_is_refused_and_the_secret_never_appears(variant, secret_file, tmp_path):
    document = xxe_documents(secret_file)[variant]
    secret = secret_file.read_text()

    with pytest.raises(XmlError) as caught:
        parse_xml(document)
    assert secret not in str(caught.value)

    # The same through the message reader, plain and MTOM: a Sender fault, its envelope clean.
    content_type, mtom_body = corpus.mtom_single_part(document, "urn:test:Ping")
    for media_type, body in (("application/soap+xml", document), (content_type, mtom_body)):
        with pytest.raises(SoapFault) as fault:
            asyncio.run(read_message(media_type, one_chunk(body), lambda: Spool(tmp_path)))
        assert fault.value.code == "Sender"
        assert "DOCTYPE" in fault.value.reason
        assert secret.encode() not in fault.value.to_envelope()
        assert secret not in fault.value.reason


def test_billion_laughs_is_refused():
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    document = f'<!DOCTYPE e [<!ENTITY l0 "lol">{entities}]><e>&l9;</e>'.encode()
    with pytest.raises(XmlError, match="DOCTYPE"):
        parse_xml(document)


@pytest.mark.parametrize("depth", [257, 10_000])
def test_deep_nesting_is_refused(depth):
    with pytest.raises(XmlError, match="deep|depth"):
        parse_xml(b"<a>" * depth + b"</a>" * depth)


def test_nesting_at_the_limit_and_a_large_text_node_are_accepted():
    assert parse_xml(b"<a>" * 256 + b"</a>" * 256).tag == "a"
    # An inline base64 document of 15 MB: beyond libxml2's default text node limit.
    assert len(parse_xml(b"<d>" + b"QUJD" * 5_000_000 + b"</d>").text) == 20_000_000


def test_not_well_formed_xml_is_refused():
    with pytest.raises(XmlError, match="not well-formed"):
        parse_xml(b"<a><b></a>")


# Envelope rules ----------------------------------------------------------------------------------


def test_nist_soap_noaction_pnr_needs_ws_addressing():
    fault = fault_of(parse_xml(corpus.read("nist-soap-noaction-pnr.xml")))
    assert fault.code == "Sender"
    assert fault.subcode == f"{{{WSA}}}MessageAddressingHeaderRequired"
    assert fault.http_status == 400


def test_nist_soap_header_after_body_is_a_sender_fault():
    fault = fault_of(parse_xml(corpus.read("nist-soap-pnr-soap-order.xml")))
    assert fault.code == "Sender"
    assert fault.subcode is None
    assert "Header followed by one Body" in fault.reason


def test_soap11_envelope_is_a_version_mismatch_with_http_500_and_an_upgrade_block():
    soap11 = parse_xml(
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<s:Body><x/></s:Body></s:Envelope>"
    )
    fault = fault_of(soap11)
    assert fault.code == "VersionMismatch"
    # SOAP 1.2 Part 2 §7.5.1.2: only env:Sender maps to 400; VersionMismatch is 500.
    assert fault.http_status == 500

    reply = parse_xml(fault.to_envelope())
    supported = reply.find(f"{{{ENV}}}Header/{{{ENV}}}Upgrade/{{{ENV}}}SupportedEnvelope")
    prefix, _, local = supported.get("qname").partition(":")
    assert (supported.nsmap[prefix], local) == (ENV, "Envelope")


def test_other_root_element_is_a_sender_fault():
    fault = fault_of(parse_xml(b"<Envelope><Body/></Envelope>"))
    assert (fault.code, fault.http_status) == ("Sender", 400)


def test_unknown_must_understand_header_is_a_must_understand_fault_naming_it():
    root = envelope(
        ACTION + MESSAGE_ID + '<v:Secret xmlns:v="urn:vendor" e:mustUnderstand="1"/>'
        '<v:Harmless xmlns:v="urn:vendor"/>'
    )
    fault = fault_of(root)
    assert fault.code == "MustUnderstand"
    assert fault.not_understood == ["{urn:vendor}Secret"]
    assert fault.http_status == 500

    reply = parse_xml(fault.to_envelope(relates_to="urn:uuid:0e9b6a1c-1111-4222-8333-444455556666"))
    blocks = reply.findall(f"{{{ENV}}}Header/{{{ENV}}}NotUnderstood")
    assert len(blocks) == 1
    prefix, _, local = blocks[0].get("qname").partition(":")
    assert (blocks[0].nsmap[prefix], local) == ("urn:vendor", "Secret")
    assert (
        reply.findtext(f"{{{ENV}}}Header/{{{WSA}}}RelatesTo")
        == "urn:uuid:0e9b6a1c-1111-4222-8333-444455556666"
    )


def test_must_understand_header_that_the_caller_understands_is_accepted():
    root = envelope(ACTION + '<v:Secret xmlns:v="urn:vendor" e:mustUnderstand="true"/>')
    assert parse_envelope(root, understood={"{urn:vendor}Secret"}).action == "urn:test:Ping"


def test_must_understand_header_for_another_role_is_not_ours_to_understand():
    root = envelope(
        ACTION
        + f'<v:Secret xmlns:v="urn:vendor" e:mustUnderstand="true" e:role="{ENV}/role/none"/>'
        '<v:Other xmlns:v="urn:vendor" e:mustUnderstand="true" e:role="urn:some:intermediary"/>'
    )
    assert parse_envelope(root).action == "urn:test:Ping"
    # ... but one addressed to "next" is ours.
    root = envelope(
        ACTION
        + f'<v:Secret xmlns:v="urn:vendor" e:mustUnderstand="true" e:role="{ENV}/role/next"/>'
    )
    assert fault_of(root).code == "MustUnderstand"


def test_must_understand_ws_addressing_headers_are_understood():
    root = envelope(
        ACTION
        + MESSAGE_ID.replace("<wsa:MessageID>", '<wsa:MessageID e:mustUnderstand="1">')
        + '<wsa:To e:mustUnderstand="true">http://127.0.0.1/x</wsa:To>'
        '<wsa:ReplyTo e:mustUnderstand="1"><wsa:Address>http://127.0.0.1/back</wsa:Address></wsa:ReplyTo>'
    )
    parsed = parse_envelope(root)
    assert (parsed.action, parsed.to, parsed.reply_to) == (
        "urn:test:Ping",
        "http://127.0.0.1/x",
        "http://127.0.0.1/back",
    )
    assert parsed.message_id == "urn:uuid:0e9b6a1c-1111-4222-8333-444455556666"
    assert parsed.body.tag == "{urn:test}Ping"


def test_action_with_surrounding_whitespace_is_trimmed_and_reply_to_defaults_to_anonymous():
    parsed = parse_envelope(envelope("<wsa:Action>\n   urn:test:Ping \t\n</wsa:Action>"))
    assert parsed.action == "urn:test:Ping"
    assert parsed.reply_to == "http://www.w3.org/2005/08/addressing/anonymous"
    assert parsed.message_id is None


def test_two_actions_are_an_invalid_addressing_header():
    fault = fault_of(envelope(ACTION + ACTION))
    assert fault.code == "Sender"
    assert fault.subcode == f"{{{WSA}}}InvalidAddressingHeader"
    assert "wsa:Action appears 2 times" in fault.reason


def test_two_message_ids_are_an_invalid_addressing_header():
    fault = fault_of(envelope(ACTION + MESSAGE_ID + MESSAGE_ID))
    assert fault.subcode == f"{{{WSA}}}InvalidAddressingHeader"


def test_empty_action_is_missing():
    assert (
        fault_of(envelope("<wsa:Action> </wsa:Action>")).subcode
        == f"{{{WSA}}}MessageAddressingHeaderRequired"
    )


@pytest.mark.parametrize("body", ["", "<a/><b/>"])
def test_body_must_hold_exactly_one_element(body):
    root = parse_xml((HEAD + ACTION + f"</e:Header><e:Body>{body}</e:Body></e:Envelope>").encode())
    assert fault_of(root).code == "Sender"


def test_built_envelope_parses_back():
    body = etree.Element("{urn:test}Ping")
    built = build_envelope(
        "urn:test:Ping",
        body,
        relates_to="urn:uuid:1",
        to="http://127.0.0.1/x",
        reply_to="http://www.w3.org/2005/08/addressing/anonymous",
    )
    parsed = parse_envelope(parse_xml(etree.tostring(built)))
    assert (parsed.action, parsed.relates_to, parsed.to) == (
        "urn:test:Ping",
        "urn:uuid:1",
        "http://127.0.0.1/x",
    )
    assert parsed.message_id.startswith("urn:uuid:")
    action = parsed.header.find(f"{{{WSA}}}Action")
    assert action.get(f"{{{ENV}}}mustUnderstand") == "true"  # IHE_WSA101


# Fault envelopes against the official schemas --------------------------------------------------


@cache
def envelope_and_addressing_schema() -> etree.XMLSchema:
    """The W3C SOAP 1.2 envelope schema with WS-Addressing 1.0, so that header blocks are checked too."""
    folder = SCHEMAS / "w3c-oasis"
    if not (folder / "soap-1.2-envelope.xsd").exists():
        pytest.skip("the SOAP 1.2 envelope schema is not in the shared reference schemas")
    wrapper = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        f'<xs:import namespace="{ENV}" schemaLocation="{(folder / "soap-1.2-envelope.xsd").as_uri()}"/>'
        f'<xs:import namespace="{WSA}" schemaLocation="{(folder / "ws-addr.xsd").as_uri()}"/>'
        "</xs:schema>"
    )
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(
        etree.fromstring(wrapper.encode(), parser, base_url=folder.as_uri() + "/")
    )


FAULTS = {
    "sender-with-wsa-subcode": SoapFault(
        "Sender", "no such action", subcode=f"{{{WSA}}}ActionNotSupported"
    ),
    "receiver": SoapFault("Receiver", "internal error"),
    "version-mismatch": SoapFault("VersionMismatch", "SOAP 1.2 only"),
    "must-understand": SoapFault(
        "MustUnderstand",
        "not understood",
        not_understood=["{urn:vendor}Secret", "{urn:other}Block"],
    ),
    "data-encoding-unknown": SoapFault("DataEncodingUnknown", "what encoding?"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_envelope_is_valid_soap12_and_reads_back(name):
    fault = FAULTS[name]
    data = fault.to_envelope(relates_to="urn:uuid:42")
    reply = etree.fromstring(data)
    schema = envelope_and_addressing_schema()
    assert schema.validate(reply), schema.error_log

    again = parse_fault(reply.find(f"{{{ENV}}}Body/{{{ENV}}}Fault"))
    assert (again.code, again.subcode, again.reason) == (fault.code, fault.subcode, fault.reason)
    action = reply.findtext(f"{{{ENV}}}Header/{{{WSA}}}Action")
    expected = (
        "http://www.w3.org/2005/08/addressing/fault"
        if fault.subcode
        else "http://www.w3.org/2005/08/addressing/soap/fault"
    )
    assert action == expected


def test_schema_catches_a_broken_fault():
    # The oracle is not blind: a fault without its Reason is refused.
    reply = etree.fromstring(FAULTS["receiver"].to_envelope())
    fault = reply.find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    fault.remove(fault.find(f"{{{ENV}}}Reason"))
    assert not envelope_and_addressing_schema().validate(reply)


def test_unknown_fault_code_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown SOAP 1.2 fault code"):
        SoapFault("Client", "SOAP 1.1 name")
