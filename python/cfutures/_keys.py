"""CurveZMQ key files as cf-keygen writes them (docs/security.md).

``cf-keygen NAME`` writes NAME.key (the public key, mode 0644) and
NAME.key_secret (the secret key, mode 0600). Each holds exactly one key
line of 40 Z85 characters; blank lines and comment lines (starting with
'#') are ignored, surrounding white space and a CR trimmed. A secret key
file that group or others may access is refused, as ssh and the C side
(core/cf_keys.c) do. Keys never appear in messages: at most a fingerprint,
the first 8 characters of a public key.
"""

import os
import stat

import zmq
from zmq.utils import z85

MAX_FILE = 4096
KEY_LEN = 40

from .errors import AuthError  # noqa: E402  (errors imports nothing of ours)


def fingerprint(public_z85):
    """The first 8 characters of a public key, for messages."""
    text = public_z85.decode("ascii") if isinstance(public_z85, bytes) else public_z85
    return text[:8]


def _valid(key):
    if len(key) != KEY_LEN:
        return False
    try:
        return z85.encode(z85.decode(key)) == key and len(z85.decode(key)) == 32
    except Exception:
        return False


def _read_key(path, secret):
    what = "secret key file" if secret else "public key file"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise OSError(f"{what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path}: not a regular file")
        if secret and st.st_mode & 0o077:
            raise AuthError(f"{what} {path}: group or others may read it (chmod 600 it)")
        if st.st_size > MAX_FILE:
            raise ValueError(f"{what} {path}: larger than {MAX_FILE} bytes")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise ValueError(f"{what} {path}: larger than {MAX_FILE} bytes")
    key = None
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if not _valid(line):
            raise ValueError(f"{what} {path}: line {number} is not a key")
        if key is not None:
            raise ValueError(f"{what} {path}: more than one key")
        key = line
    if key is None:
        raise ValueError(f"{what} {path}: no key in it")
    return key


def read_public(path):
    """The public key (Z85 bytes) in a key file such as broker.key."""
    return _read_key(path, secret=False)


def read_pair(secret_path):
    """(public, secret) Z85 bytes from a secret key file such as
    alice.key_secret; the public half is derived."""
    secret = _read_key(secret_path, secret=True)
    return zmq.curve_public(secret), secret


def apply_client(sock, server_public, public, secret):
    """Makes sock a CURVE client of the server with that public key. Call
    before connect."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def load_client_keys(broker_key, key):
    """Both file paths or neither: (server_public, public, secret) or None.
    Raises ValueError for one without the other, the errors of read_* for
    bad files, RuntimeError when libzmq lacks CURVE."""
    if broker_key is None and key is None:
        return None
    if broker_key is None or key is None:
        raise ValueError("CURVE needs both the broker's public key file and this "
                         "peer's secret key file")
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    server = read_public(broker_key)
    public, secret = read_pair(key)
    return server, public, secret
