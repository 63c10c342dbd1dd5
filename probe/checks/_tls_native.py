"""Reading a connection's TLS session and offering it to the next one, through OpenSSL itself.

Why: CPython copies a session through DER (i2d_SSL_SESSION, then d2i_SSL_SESSION) both when it
is read (`SSLObject.session`) and when it is offered (`wrap_bio(session=)`, the setter), a
workaround for OpenSSL 1.1.0 (openssl/openssl#1550: a session changed after use) that 3.11
applies on every OpenSSL. Decoding the copy parses the server's certificate again; with OpenSSL
3.0 each copy costs ~0.13-0.15 ms, an eighth of a resumed HTTPS probe's CPU. OpenSSL 1.1.1 and
later have SSL_SESSION_dup, which copies the same fields and shares the certificate by
reference. So here every read and every offer is an SSL_SESSION_dup: each connection and each
remembered session still has a copy of its own (a connection that fails marks only its copy as
not resumable, as with CPython's copies), at the cost of a few allocations.

How: the SSL* of an SSLObject is read from CPython's object layout (the first fields of _ssl's
PySSLSocket: the socket weakref, SSL *ssl, the context; stable since 3.7 and read the same way
by sslkeylog and sabctools), and OpenSSL is called through ctypes on the libssl CPython's _ssl
module is linked with. Nothing is trusted blindly: before the first use the layout is checked
on a real connection (the socket field NULL as wrap_bio leaves it, the context field the
SSLContext itself, OpenSSL's SSL_get_SSL_CTX agreeing with the SSL_CTX* the context holds),
every call checks the context field again, and anything that does not match (another
interpreter, another layout, an _ssl without exported OpenSSL symbols) selects CPython's
public path for the life of the process.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from collections.abc import Callable
from typing import Any, Protocol

_P = ctypes.sizeof(ctypes.c_void_p)
_HEAD = object.__basicsize__  # PyObject_HEAD: refcount and type
# PySSLSocket: PyObject_HEAD, Socket (weakref; NULL under wrap_bio), SSL *ssl, PySSLContext *ctx
_SOCK_SOCKET, _SOCK_SSL, _SOCK_CTX = _HEAD, _HEAD + _P, _HEAD + 2 * _P
# PySSLContext: PyObject_HEAD, SSL_CTX *ctx
_CTX_CTX = _HEAD


class Access(Protocol):
    """How sessions are read and offered (the two implementations below)."""

    def read(self, conn: Any, ctx: ssl.SSLContext) -> object | None:
        """The session of `conn` (made by `ctx`, handshake done) if a later handshake can
        resume it, else None."""

    def offer(self, conn: Any, session: object, ctx: ssl.SSLContext) -> None:
        """Offer `session` (one `read` returned for `ctx`) on `conn`, not yet handshaking."""


def _resumable(has_ticket: bool, version: str | None, has_id: bool) -> bool:
    """TLS 1.3 resumes only with a ticket from the server (offering a ticketless session costs
    a handshake ~0.5 ms more and resumes nothing); TLS 1.2 also by session id from the server's
    cache."""
    return has_ticket or (version != "TLSv1.3" and has_id)


class Public:
    """CPython's own API: its copies through DER."""

    def read(self, conn: Any, ctx: ssl.SSLContext) -> object | None:
        session = conn.session
        if session is None or not _resumable(session.has_ticket, conn.version(),
                                             bool(session.id)):
            return None
        return session

    def offer(self, conn: Any, session: object, ctx: ssl.SSLContext) -> None:
        try:
            conn.session = session
        except ValueError:  # another context's session: a full handshake
            pass


def _field(obj: object, offset: int) -> int:
    """The pointer-sized field at `offset` of `obj`'s C struct (0 for NULL)."""
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


class Held:
    """One SSL_SESSION copy of ours, freed with this object."""

    __slots__ = ("_free", "ctx_id", "ptr")

    def __init__(self, ptr: int, ctx_id: int, free: Callable[[int], None]) -> None:
        self.ptr, self.ctx_id, self._free = ptr, ctx_id, free

    def __del__(self) -> None:
        self._free(self.ptr)


def _fn(lib: ctypes.PyDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class Native:
    """SSL_SESSION_dup on read and on offer, through ctypes (see the module docstring)."""

    def __init__(self, lib: ctypes.PyDLL) -> None:
        vp = ctypes.c_void_p
        self._get = _fn(lib, "SSL_get_session", vp, vp)  # SSL_get0_session is a macro of it
        self._dup = _fn(lib, "SSL_SESSION_dup", vp, vp)
        self._free = _fn(lib, "SSL_SESSION_free", None, vp)
        self._set = _fn(lib, "SSL_set_session", ctypes.c_int, vp, vp)
        self._has_ticket = _fn(lib, "SSL_SESSION_has_ticket", ctypes.c_int, vp)
        self._get_id = _fn(lib, "SSL_SESSION_get_id", vp, vp, ctypes.POINTER(ctypes.c_uint))
        self._get_ctx = _fn(lib, "SSL_get_SSL_CTX", vp, vp)

    def holds(self, conn: Any, ctx: ssl.SSLContext) -> bool:
        """Whether the offsets read the fields they mean, on a connection `ctx` made."""
        sock = getattr(conn, "_sslobj", None)
        if (sock is None or type(sock).__basicsize__ < _SOCK_CTX + _P
                or type(ctx).__basicsize__ < _CTX_CTX + _P):
            return False
        if _field(sock, _SOCK_SOCKET) != 0 or _field(sock, _SOCK_CTX) != id(ctx):
            return False
        ssl_ptr, ctx_ptr = _field(sock, _SOCK_SSL), _field(ctx, _CTX_CTX)
        return bool(ssl_ptr and ctx_ptr and self._get_ctx(ssl_ptr) == ctx_ptr)

    def _ssl(self, conn: Any, ctx: ssl.SSLContext) -> int:
        sock = conn._sslobj
        return _field(sock, _SOCK_SSL) if _field(sock, _SOCK_CTX) == id(ctx) else 0

    def read(self, conn: Any, ctx: ssl.SSLContext) -> Held | None:
        ssl_ptr = self._ssl(conn, ctx)
        session = self._get(ssl_ptr) if ssl_ptr else 0
        if not session:
            return None
        id_len = ctypes.c_uint(0)
        self._get_id(session, ctypes.byref(id_len))
        if not _resumable(bool(self._has_ticket(session)), conn.version(), id_len.value > 0):
            return None
        copy = self._dup(session)
        return Held(copy, id(ctx), self._free) if copy else None

    def offer(self, conn: Any, session: object, ctx: ssl.SSLContext) -> None:
        ssl_ptr = self._ssl(conn, ctx)
        if not ssl_ptr or not isinstance(session, Held) or session.ctx_id != id(ctx):
            return  # another context's session: CPython refuses it too; a full handshake
        copy = self._dup(session.ptr)
        if copy:
            self._set(ssl_ptr, copy)
            self._free(copy)  # SSL_set_session took a reference of its own

    def offered(self, conn: Any) -> int:
        """The SSL_SESSION* `conn` will offer (for tests: 0 when none)."""
        return self._get(_field(conn._sslobj, _SOCK_SSL)) or 0


def _load() -> Native | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        return Native(ctypes.PyDLL(_ssl.__file__))
    except (ImportError, OSError, AttributeError):
        return None


class Sessions:
    """The process's choice of Access, made on the first read (every offer follows a read, so
    no session of one kind is ever offered through the other)."""

    def __init__(self, load: Callable[[], Native | None] = _load) -> None:
        self._load = load
        self.access: Access | None = None

    def read(self, conn: Any, ctx: ssl.SSLContext) -> object | None:
        access = self.access
        if access is None:
            native = self._load()
            access = self.access = (native if native is not None and native.holds(conn, ctx)
                                    else Public())
        return access.read(conn, ctx)

    def offer(self, conn: Any, session: object, ctx: ssl.SSLContext) -> None:
        if self.access is not None:
            self.access.offer(conn, session, ctx)


SESSIONS = Sessions()
