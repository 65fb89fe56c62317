"""The SOAP 1.2 envelope and its WS-Addressing 1.0 headers, read and written."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lxml import etree

from soap.faults import SoapFault
from soap.xml import SOAP11_ENV, SOAP12_ENV, WSA, WSA_ANONYMOUS

MUST_UNDERSTAND = f"{{{SOAP12_ENV}}}mustUnderstand"
ROLE = f"{{{SOAP12_ENV}}}role"
# SOAP 1.2 Part 1 §2.2: as the ultimate receiver we act in these roles; an absent role means
# ultimateReceiver. A block for any other role (e.g. .../role/none) is not ours to understand.
OUR_ROLES = ("", f"{SOAP12_ENV}/role/next", f"{SOAP12_ENV}/role/ultimateReceiver")


@dataclass
class SoapEnvelope:
    action: str
    message_id: str | None
    to: str | None
    reply_to: str | None
    relates_to: str | None
    header: etree._Element | None
    body: etree._Element
    root: etree._Element


def parse_envelope(
    root: etree._Element, understood: frozenset[str] | set[str] = frozenset()
) -> SoapEnvelope:
    """Check the envelope's structure and headers; raise SoapFault when SOAP 1.2 says so.

    ``understood`` lists the Clark-notation names of the non-WS-Addressing header blocks the
    caller processes; any other block marked mustUnderstand gets a MustUnderstand fault.
    """
    if root.tag == f"{{{SOAP11_ENV}}}Envelope":
        raise SoapFault(
            "VersionMismatch",
            "this endpoint speaks SOAP 1.2 only; the message is a SOAP 1.1 envelope",
        )
    if root.tag != f"{{{SOAP12_ENV}}}Envelope":
        raise SoapFault(
            "Sender", f"the message is not a SOAP 1.2 envelope (root element {root.tag})"
        )

    children = [child for child in root if isinstance(child.tag, str)]
    names = [child.tag for child in children]
    if names not in (
        [f"{{{SOAP12_ENV}}}Body"],
        [f"{{{SOAP12_ENV}}}Header", f"{{{SOAP12_ENV}}}Body"],
    ):
        raise SoapFault(
            "Sender",
            "a SOAP 1.2 envelope holds an optional Header followed by one Body, nothing else",
        )
    header = children[0] if len(children) == 2 else None
    body_element = children[-1]

    _check_must_understand(header, understood)
    addressing = _addressing(header)

    content = [child for child in body_element if isinstance(child.tag, str)]
    if not content:
        raise SoapFault("Sender", "the SOAP Body is empty")
    if len(content) > 1:
        raise SoapFault("Sender", "the SOAP Body must hold exactly one element")

    return SoapEnvelope(body=content[0], header=header, root=root, **addressing)


def _check_must_understand(header, understood) -> None:
    if header is None:
        return
    not_understood = []
    for block in header:
        if not isinstance(block.tag, str):
            continue
        flag = (block.get(MUST_UNDERSTAND) or "").strip()
        if flag not in ("1", "true"):
            continue
        if (block.get(ROLE) or "").strip() not in OUR_ROLES:
            continue
        if block.tag.startswith(f"{{{WSA}}}") or block.tag in understood:
            continue
        not_understood.append(block.tag)
    if not_understood:
        raise SoapFault(
            "MustUnderstand",
            "header block(s) marked mustUnderstand are not understood here: "
            + ", ".join(not_understood),
            not_understood=not_understood,
        )


def _addressing(header) -> dict:
    def single(local: str) -> etree._Element | None:
        found = [] if header is None else header.findall(f"{{{WSA}}}{local}")
        if len(found) > 1:
            raise SoapFault(
                "Sender",
                f"wsa:{local} appears {len(found)} times; at most once is allowed",
                subcode=f"{{{WSA}}}InvalidAddressingHeader",
            )
        return found[0] if found else None

    action = single("Action")
    if action is None or not (action.text or "").strip():
        raise SoapFault(
            "Sender",
            "the WS-Addressing header wsa:Action is required",
            subcode=f"{{{WSA}}}MessageAddressingHeaderRequired",
        )
    reply_to = single("ReplyTo")
    reply_address = None
    if reply_to is not None:
        reply_address = (reply_to.findtext(f"{{{WSA}}}Address") or "").strip() or None

    def text(local: str) -> str | None:
        element = single(local)
        return (element.text or "").strip() or None if element is not None else None

    return {
        "action": action.text.strip(),
        "message_id": text("MessageID"),
        "to": text("To"),
        "reply_to": reply_address or WSA_ANONYMOUS,  # absent ReplyTo means anonymous (WS-A default)
        "relates_to": text("RelatesTo"),
    }


def build_envelope(
    action: str,
    body: etree._Element,
    relates_to: str | None = None,
    message_id: str | None = None,
    to: str | None = None,
    reply_to: str | None = None,
) -> etree._Element:
    """A SOAP 1.2 envelope with WS-Addressing headers around ``body``."""
    envelope = etree.Element(f"{{{SOAP12_ENV}}}Envelope", nsmap={"env": SOAP12_ENV, "wsa": WSA})
    header = etree.SubElement(envelope, f"{{{SOAP12_ENV}}}Header")
    action_element = etree.SubElement(header, f"{{{WSA}}}Action")
    action_element.text = action
    action_element.set(MUST_UNDERSTAND, "true")
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = message_id or f"urn:uuid:{uuid.uuid4()}"
    if reply_to:
        etree.SubElement(
            etree.SubElement(header, f"{{{WSA}}}ReplyTo"), f"{{{WSA}}}Address"
        ).text = reply_to
    if to:
        etree.SubElement(header, f"{{{WSA}}}To").text = to
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    etree.SubElement(envelope, f"{{{SOAP12_ENV}}}Body").append(body)
    return envelope
