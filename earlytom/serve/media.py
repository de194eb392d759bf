"""Where a request's video comes from: a `data:` URL (decoded to a temporary file, which PyAV reads) or a
`file://` URL inside the one directory the operator allowed. Remote URLs are refused: the server fetches nothing."""

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from earlytom.serve.protocol import ApiError

TEMPORARY_NAME = "<the data URL>"


@dataclass(frozen=True)
class Media:
    """A video file for one request; `temporary` files are deleted by `release()` once the model is done."""

    path: Path
    temporary: bool

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)

    def public(self, message: str) -> str:
        """`message` as the client may see it: a temporary file is named TEMPORARY_NAME, not by its server path."""
        return message.replace(str(self.path), TEMPORARY_NAME) if self.temporary else message


def too_large(size: int, limit: int, what: str) -> ApiError:
    return ApiError(
        413, f"{what} is {size} bytes, over this server's limit of {limit} (--max-video-bytes)", "video_too_large"
    )


def base64_size(payload: str) -> int:
    """Bytes that base64 text of this length decodes to (ignoring padding)."""
    return len(payload) * 3 // 4 - payload[-2:].count("=")


def from_data_url(url: str, max_bytes: int) -> Media:
    """data:video/<type>;base64,<payload> -> a temporary file holding the decoded bytes."""
    header, comma, payload = url.partition(",")
    mime, _, encoding = header.removeprefix("data:").partition(";")
    if not comma or encoding != "base64" or not mime.startswith("video/"):
        raise ApiError(
            400, f"a data URL must read data:video/<type>;base64,<payload>; got {header[:60]!r}", "invalid_data_url"
        )
    if base64_size(payload) > max_bytes:
        raise too_large(base64_size(payload), max_bytes, "the video in the data URL")
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError as error:  # binascii.Error, or a character that is not ASCII
        raise ApiError(400, f"the data URL's payload is not valid base64: {error}", "invalid_data_url") from error
    if not data:
        raise ApiError(400, "the data URL holds no bytes", "invalid_data_url")
    handle, name = tempfile.mkstemp(prefix="earlytom-serve-")  # PyAV probes the container from the bytes
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return Media(Path(name), temporary=True)


def from_file_url(url: str, allowed: Path | None, max_bytes: int) -> Media:
    """file:///path -> that file, if it (after resolving symlinks and `..`) lies inside `allowed`."""
    if allowed is None:
        raise ApiError(
            403, "file:// URLs are disabled; start the server with --allowed-local-media-path DIR", "file_url_disabled"
        )
    try:
        parsed = urlparse(url)
        path = Path(unquote(parsed.path)).resolve()
        inside = path.is_relative_to(allowed)  # whole path components: /srv/videos-evil is not in /srv/videos
        size = path.stat().st_size if inside and path.is_file() else None
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, an unencodable or overlong name, a link loop
        raise ApiError(400, f"file URL {url!r} names no usable path: {error}", "invalid_url") from error
    if parsed.netloc not in ("", "localhost"):
        raise ApiError(400, f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path", "invalid_url")
    if not inside:
        raise ApiError(
            403,
            f"{url!r} lies outside the allowed media directory {allowed} (--allowed-local-media-path)",
            "media_path_forbidden",
        )
    if size is None:
        raise ApiError(400, f"{url!r}: no such video file under {allowed}", "media_not_found")
    if size > max_bytes:
        raise too_large(size, max_bytes, repr(url))
    return Media(path, temporary=False)


def open_media(url: str, *, allowed: Path | None, max_bytes: int) -> Media:
    """The video file a `video_url` points to, or a 4xx ApiError saying why it cannot be used."""
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        return from_data_url(url, max_bytes)
    if scheme == "file":
        return from_file_url(url, allowed, max_bytes)
    if scheme in ("http", "https"):
        raise ApiError(
            400,
            f"this server does not fetch remote videos ({url[:80]}); send the video inline as a "
            "data:video/...;base64 URL, or as a file:// URL inside --allowed-local-media-path",
            "remote_url_refused",
        )
    raise ApiError(400, f"unsupported video URL scheme {scheme!r}; use data: or file://", "invalid_url")
