"""Contracts: formats another party reads (the HTTP API's bodies and answers, the
Pub/Sub messages and push envelopes, object names and metadata, durable links,
the sheet's row and its status words).

May import ``shared.domain``; nothing else of ours. A change here changes what a
caller, the Apps Script or another stage sees.
"""
