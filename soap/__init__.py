"""SOAP 1.2 transport: envelope, WS-Addressing, MTOM/XOP streaming, faults, hardened XML.

Knows nothing of XDS or DICOM.
"""
