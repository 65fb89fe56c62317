"""The DICOM side: archive (C-STORE, Storage Commitment, query/retrieve), index, KOS manifests,
transfer-syntax conversion and WADO.

Knows nothing of SOAP or XDS: it receives its blob store and database engine from the caller.
"""
