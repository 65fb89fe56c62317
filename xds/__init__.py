"""The XDS domain: ebRIM metadata, the Document Repository, the Imaging Document Source,
the embedded Document Registry, persistence, configuration and the command line."""
