"""Adapters: everything that talks to an SDK, the network or Pillow (Firestore,
Cloud Storage, Pub/Sub, Gemini, Sheets, the reference fetcher and its SSRF guard,
identity, thumbnails, logging), each implementing a port of ``shared.services.ports``.

May import ``shared.services.ports``, ``shared.contracts``, ``shared.config`` and
``shared.domain``; never a use case.
"""
