"""Provenance: C2PA (Content Credentials) verification, trust settings and the emulator's test signer.

* :mod:`~batchpipe.provenance.verify`: :class:`C2paVerifier` -> :class:`C2paReport` (state, codes, signer).
* :mod:`~batchpipe.provenance.trust`: :class:`TrustConfig` (default / emulator / none / a PEM file).
* :mod:`~batchpipe.provenance.sign`: :func:`sign_image`, the emulator's OpenAI-shaped TEST signer.
* :mod:`~batchpipe.provenance.cli`: the ``batchpipe verify`` command (``verify_command``).
"""

from batchpipe.provenance.sign import EMULATOR_ROOT_PEM, sign_image
from batchpipe.provenance.trust import TrustConfig
from batchpipe.provenance.verify import C2paReport, C2paState, C2paVerifier

__all__ = ["EMULATOR_ROOT_PEM", "C2paReport", "C2paState", "C2paVerifier", "TrustConfig", "sign_image"]
