"""How a payload's bytes travel: raw or gzip-compressed, inline as base64 text or stored as an object.

Pure: no I/O. The rules, each tested at its edge:

* a pickle of at most :data:`GZIP_THRESHOLD_BYTES` (4 KiB) travels as it is; a larger one is
  gzip-compressed (pickles of code and data shrink 3-10x; the remote side decompresses with the
  stdlib);
* the encoded body travels *inline* while its base64 text is at most the inline limit of the
  backend, else it is *stored* (a file in the job's directory on a cluster, an S3 object for Batch)
  and the job is told where, with its SHA-256;
* inline means inside the job script (clusters: a quoted heredoc, never the command line, the
  environment or the job name) or in the container's environment through the Batch API.

Why these limits: AWS Batch refuses a SubmitJob request over 30 KiB in all (names, tags, the command
with the compressed bootstrap, the user's environment), so a Batch payload stays inline up to 16 KiB.
A cluster keeps each job script (Slurm in its state directory, and in its accounting database when
the site stores scripts), so a cluster payload stays inline up to 64 KiB.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from enum import Enum

GZIP_THRESHOLD_BYTES = 4 * 1024
CLUSTER_INLINE_LIMIT_BYTES = 64 * 1024
BATCH_INLINE_LIMIT_BYTES = 16 * 1024
# A stored payload on a cluster is written through a heredoc over SSH (base64, about 4/3 of its size):
# past this, pass the data as a file on the cluster instead of an argument.
MAX_STORED_PAYLOAD_BYTES = 256 * 1024 * 1024


class Compression(Enum):
    NONE = "none"
    GZIP = "gzip"


@dataclass(frozen=True)
class EncodedBody:
    """A pickle as it travels: ``data`` is what is stored (compressed when ``compression`` says so)."""

    compression: Compression
    data: bytes
    raw_size: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def inline_text(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @property
    def inline_size(self) -> int:
        """Length of :attr:`inline_text`, computed without encoding."""
        return 4 * ((len(self.data) + 2) // 3)

    def fits_inline(self, limit_bytes: int) -> bool:
        return self.inline_size <= limit_bytes


def encode_body(raw: bytes, *, gzip_threshold_bytes: int = GZIP_THRESHOLD_BYTES) -> EncodedBody:
    if len(raw) <= gzip_threshold_bytes:
        return EncodedBody(Compression.NONE, raw, len(raw))
    # mtime=0: the same pickle always gives the same bytes (and the same SHA-256).
    return EncodedBody(Compression.GZIP, gzip.compress(raw, compresslevel=6, mtime=0), len(raw))


def decode_body(compression: Compression, data: bytes) -> bytes:
    return gzip.decompress(data) if compression is Compression.GZIP else data
