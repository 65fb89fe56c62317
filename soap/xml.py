"""Hardened XML parsing and the namespaces of the SOAP layer.

Every XML document that arrives from the network goes through ``parse_xml``: no entity is
resolved, no DTD is loaded, nothing is fetched from the network, and a document that carries a
DOCTYPE at all is refused, which stops external-entity (XXE) and entity-expansion attacks before
the parser sees them. Nesting deeper than MAX_DEPTH is refused (libxml2 itself stops at 2048
levels), while a single text node may be large: an inline base64 document of a few MB is normal
in plain SOAP, and the caller bounds the size of the whole envelope.
"""

from __future__ import annotations

import re

from lxml import etree

SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
XOP_NS = "http://www.w3.org/2004/08/xop/include"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"

MAX_DEPTH = 256

# A DOCTYPE may only stand in the prolog; look for it, in any of the encodings XML allows
# without a byte-order trick (UTF-8 and its ASCII-compatible relatives, and UTF-16).
_UTF16_DOCTYPE = rb"<\x00!\x00D\x00O\x00C\x00T\x00Y\x00P\x00E"
_DOCTYPE = re.compile(rb"<!DOCTYPE|" + _UTF16_DOCTYPE + rb"|\x00" + _UTF16_DOCTYPE, re.IGNORECASE)


class XmlError(ValueError):
    """The bytes are not an acceptable XML document; the message says why."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        # huge_tree lifts libxml2's 10 MB limit on one text node (an inline base64 document);
        # depth is checked by parse_xml and the envelope size by the caller.
        huge_tree=True,
        remove_comments=False,
        collect_ids=False,
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse one XML document from untrusted bytes."""
    if _DOCTYPE.search(data[: _prolog_end(data)]):
        raise XmlError("a DOCTYPE is not allowed in a SOAP message")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise XmlError("a DOCTYPE is not allowed in a SOAP message")
    if _TOO_DEEP(root):
        raise XmlError(f"the XML nests elements more than {MAX_DEPTH} levels deep")
    return root


# True when some element sits below MAX_DEPTH levels; evaluated level by level inside libxml2.
_TOO_DEEP = etree.XPath("boolean(/" + "/".join(["*"] * (MAX_DEPTH + 1)) + ")")


def _prolog_end(data: bytes) -> int:
    """Where the root element starts, roughly: the first '<' that opens neither a processing
    instruction, a comment nor a declaration. The whole buffer when it cannot be told."""
    position = 0
    while True:
        position = data.find(b"<", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1 : position + 2]
        if following not in (b"?", b"!", b"\x00"):
            return position
        position += 1
