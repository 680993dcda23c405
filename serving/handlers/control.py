"""Who may change what a server serves: load and unload (the model repository extension) carry the
operator's key, CAPSNET_CONTROL_KEY, in the `capsnet-control-key` header (REST) or request metadata
(gRPC), as Triton's restricted API groups carry a header key and value. Both transports check it here,
through the one data plane (serving/oip/dataplane.py). The key is compared in constant time and never
logged; the refusal names the header, not the key."""

from __future__ import annotations

import hmac

from serving.errors import ControlKeyMissing, ControlKeyWrong

CONTROL_KEY_HEADER = "capsnet-control-key"  # lower case: gRPC metadata keys must be


def check_control_key(expected: str, given: str | None) -> None:
    """Pass when `given` is the operator's key `expected`; ControlKeyMissing (401 / UNAUTHENTICATED)
    without one, ControlKeyWrong (403 / PERMISSION_DENIED) for another."""
    if not given:
        raise ControlKeyMissing(f"loading and unloading models needs the operator's key in the "
                                f"'{CONTROL_KEY_HEADER}' header (gRPC: request metadata)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ControlKeyWrong(f"the '{CONTROL_KEY_HEADER}' given is not this server's control key")
