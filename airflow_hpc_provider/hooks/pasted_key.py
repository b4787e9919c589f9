"""A private key pasted into a connection form, put back into the shape SSH libraries read.

A key pasted into a one-line field (or through a tool that joins lines) arrives with its line
breaks turned into spaces, dropped, or written as the two characters ``\n``, as in
``-----BEGIN OPENSSH PRIVATE KEY----- b3Bl... -----END ...``. Its base64 body is intact, so the
lines can be rebuilt exactly. The one shape that cannot be rebuilt is a legacy encrypted PEM key,
whose ``Proc-Type``/``DEK-Info`` header lines run into the body: that is refused with a message
that says how to paste it instead.
"""

from __future__ import annotations

import re

from airflow_hpc_provider.errors import ConnectionConfigError

_ARMOURED = re.compile(r"^-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----$", re.DOTALL)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=]+$")
_LINE = 64


def repair_pasted_key(text: str) -> str:
    """The key with its line breaks, rebuilt if they were lost; unchanged if they were not."""
    key = text.strip()
    if "\n" in key or "\r" in key:
        return text  # pasted with its lines: leave it exactly as it is
    if "\\n" in key:
        # Escaped for JSON or an environment variable and never unescaped: the lines are all there.
        return key.replace("\\r", "").replace("\\n", "\n") + "\n"
    armoured = _ARMOURED.match(key)
    if armoured is None:
        if key.startswith("PuTTY-User-Key-File"):
            raise ConnectionConfigError(
                "the pasted PuTTY key lost its line breaks and cannot be rebuilt: paste it with its lines "
                "kept, or export it in OpenSSH format (PuTTYgen: Conversions > Export OpenSSH key)"
            )
        return text  # not something this knows how to rebuild: let the SSH library say what it is
    kind, body = armoured.group(1), armoured.group(2)
    if ":" in body:
        raise ConnectionConfigError(
            f"the pasted {kind} lost its line breaks, and its header lines (such as Proc-Type: and "
            "DEK-Info: of an encrypted PEM key) cannot be told apart from its body: paste it with its lines "
            "kept, or convert it to the OpenSSH format first ('ssh-keygen -p -f <key file>')"
        )
    joined = "".join(body.split())
    if not _BASE64.fullmatch(joined):
        raise ConnectionConfigError(f"the pasted {kind} lost its line breaks and its body is not base64")
    lines = [joined[start : start + _LINE] for start in range(0, len(joined), _LINE)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----", ""])
