"""SOAP 1.2 faults, and how they travel: envelope, WS-Addressing fault action, HTTP status."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from lxml import etree

from soap.xml import SOAP12_ENV, WSA

CODES = ("VersionMismatch", "MustUnderstand", "DataEncodingUnknown", "Sender", "Receiver")
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/fault"
SOAP_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"


class SoapFault(Exception):
    """A SOAP 1.2 fault: ``code`` is one of CODES; ``subcode`` a Clark-notation QName."""

    def __init__(
        self,
        code: str,
        reason: str,
        subcode: str | None = None,
        not_understood: Iterable[str] = (),
    ):
        if code not in CODES:
            raise ValueError(f"unknown SOAP 1.2 fault code {code!r}")
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subcode = subcode
        self.not_understood = list(not_understood)

    @property
    def http_status(self) -> int:
        # SOAP 1.2 Part 2, HTTP binding: a Sender fault is the client's error.
        return 400 if self.code == "Sender" else 500

    def to_envelope(self, relates_to: str | None = None) -> bytes:
        """The fault as a SOAP 1.2 envelope (UTF-8), with the WS-Addressing fault action,
        RelatesTo when the request's MessageID is known, and one env:NotUnderstood block per
        header block a MustUnderstand fault names. The reason is the only text it carries."""
        envelope = etree.Element(f"{{{SOAP12_ENV}}}Envelope", nsmap={"env": SOAP12_ENV, "wsa": WSA})
        header = etree.SubElement(envelope, f"{{{SOAP12_ENV}}}Header")
        is_addressing = self.subcode is not None and self.subcode.startswith(f"{{{WSA}}}")
        action = etree.SubElement(header, f"{{{WSA}}}Action")
        action.text = WSA_FAULT_ACTION if is_addressing else SOAP_FAULT_ACTION
        action.set(f"{{{SOAP12_ENV}}}mustUnderstand", "true")
        etree.SubElement(header, f"{{{WSA}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
        if relates_to:
            etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
        if self.code == "VersionMismatch":
            # SOAP 1.2 Part 1 §5.4.7: name the envelope version we do support.
            upgrade = etree.SubElement(header, f"{{{SOAP12_ENV}}}Upgrade")
            etree.SubElement(upgrade, f"{{{SOAP12_ENV}}}SupportedEnvelope", qname="env:Envelope")
        for qname in self.not_understood:
            namespace, _, local = qname[1:].partition("}")
            block = etree.SubElement(
                header, f"{{{SOAP12_ENV}}}NotUnderstood", nsmap={"nu": namespace}
            )
            block.set("qname", f"nu:{local}")

        fault = etree.SubElement(
            etree.SubElement(envelope, f"{{{SOAP12_ENV}}}Body"), f"{{{SOAP12_ENV}}}Fault"
        )
        code = etree.SubElement(fault, f"{{{SOAP12_ENV}}}Code")
        etree.SubElement(code, f"{{{SOAP12_ENV}}}Value").text = f"env:{self.code}"
        if self.subcode:
            namespace, _, local = self.subcode[1:].partition("}")
            subcode = etree.SubElement(code, f"{{{SOAP12_ENV}}}Subcode")
            value = etree.SubElement(subcode, f"{{{SOAP12_ENV}}}Value", nsmap={"sub": namespace})
            value.text = f"sub:{local}"
        reason = etree.SubElement(fault, f"{{{SOAP12_ENV}}}Reason")
        text = etree.SubElement(reason, f"{{{SOAP12_ENV}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = self.reason
        return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def parse_fault(fault: etree._Element) -> SoapFault:
    """A SoapFault from a received env:Fault element."""
    value = (fault.findtext(f"{{{SOAP12_ENV}}}Code/{{{SOAP12_ENV}}}Value") or "").strip()
    code = value.rpartition(":")[2] or "Receiver"
    subvalue = fault.find(f"{{{SOAP12_ENV}}}Code/{{{SOAP12_ENV}}}Subcode/{{{SOAP12_ENV}}}Value")
    subcode = None
    if subvalue is not None and subvalue.text:
        prefix, _, local = subvalue.text.strip().rpartition(":")
        subcode = f"{{{subvalue.nsmap.get(prefix or None, '')}}}{local}"
    reason = (fault.findtext(f"{{{SOAP12_ENV}}}Reason/{{{SOAP12_ENV}}}Text") or "").strip()
    return SoapFault(
        code if code in CODES else "Receiver", reason or "fault without a reason", subcode
    )
