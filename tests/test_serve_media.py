"""Where a request's video may come from (earlytom.serve.media), on real files in temporary directories: the
allow-list is a check of whole path components, and every malformed URL is a 4xx ApiError, never another error."""

import base64
import os

import pytest

pytest.importorskip("pydantic", reason="the [serve] extra is not installed")

from earlytom.serve.media import TEMPORARY_NAME, open_media  # noqa: E402
from earlytom.serve.protocol import ApiError  # noqa: E402

LIMIT = 1 << 20


@pytest.fixture
def srv(tmp_path):
    """tmp/videos (the allowed directory) and look-alikes beside it: tmp/videos-evil, tmp/videosx, tmp/vid."""
    for name in ("videos", "videos-evil", "videosx", "vid"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.mp4").write_bytes(b"not really a video, but a file")
    return tmp_path


def refused(url: str, allowed, status: int, code: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        open_media(url, allowed=allowed, max_bytes=LIMIT)
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.message
    return caught.value


def test_a_file_inside_the_allowed_directory_is_served(srv):
    media = open_media((srv / "videos" / "x.mp4").as_uri(), allowed=srv / "videos", max_bytes=LIMIT)
    assert media.path == srv / "videos" / "x.mp4" and not media.temporary


@pytest.mark.parametrize("name", ["videos-evil", "videosx"])
def test_a_directory_whose_name_extends_the_allowed_one_is_outside_it(srv, name):
    """`/srv/videos-evil/x.mp4` starts with the string `/srv/videos` but is not under the directory /srv/videos."""
    url = (srv / name / "x.mp4").as_uri()
    assert url.startswith((srv / "videos").as_uri())  # the look-alike a string-prefix check would let through
    refused(url, srv / "videos", 403, "media_path_forbidden")


def test_the_allowed_directory_is_not_widened_by_a_shorter_name(srv):
    """Allowed /srv/vid: /srv/videos/x.mp4 shares the prefix `/srv/vid` and lies outside."""
    refused((srv / "videos" / "x.mp4").as_uri(), srv / "vid", 403, "media_path_forbidden")
    assert open_media((srv / "vid" / "x.mp4").as_uri(), allowed=srv / "vid", max_bytes=LIMIT).path.is_file()


def test_dot_dot_and_links_are_judged_where_they_lead(srv):
    refused(f"file://{srv}/videos/../videos-evil/x.mp4", srv / "videos", 403, "media_path_forbidden")
    (srv / "videos" / "link.mp4").symlink_to(srv / "videos-evil" / "x.mp4")
    refused((srv / "videos" / "link.mp4").as_uri(), srv / "videos", 403, "media_path_forbidden")
    os.symlink("loop", srv / "videos" / "loop")  # a link to itself
    refused((srv / "videos" / "loop").as_uri(), srv / "videos", 400, "invalid_url")


@pytest.mark.parametrize(
    "tail",
    ["a%00b.mp4", "a\x00b.mp4", "\ud800.mp4", "a" * 5000 + ".mp4"],
    ids=["encoded NUL", "raw NUL", "lone surrogate", "name too long"],
)
def test_unusable_file_names_are_400(srv, tail):
    error = refused(f"file://{srv}/videos/{tail}", srv / "videos", 400, "invalid_url")
    assert "names no usable path" in error.message


def test_malformed_file_urls_are_400(srv):
    refused("file://[/x.mp4", srv / "videos", 400, "invalid_url")
    refused(f"file://example.com{srv}/videos/x.mp4", srv / "videos", 400, "invalid_url")
    refused(f"file://{srv}/videos/absent.mp4", srv / "videos", 400, "media_not_found")


@pytest.mark.parametrize(
    "payload", ["\u00e9\u00e9\u00e9\u00e9", "@@@@", "QUJD\ud800"], ids=["not ascii", "not base64", "lone surrogate"]
)
def test_malformed_data_urls_are_400(payload):
    refused(f"data:video/mp4;base64,{payload}", None, 400, "invalid_data_url")


def test_a_temporary_file_is_never_named_to_the_client():
    media = open_media("data:video/mp4;base64," + base64.b64encode(b"bytes").decode(), allowed=None, max_bytes=LIMIT)
    try:
        message = media.public(f"cannot read video {media.path}: Invalid data in '{media.path}'")
        assert message == f"cannot read video {TEMPORARY_NAME}: Invalid data in '{TEMPORARY_NAME}'"
    finally:
        media.release()
    assert not media.path.exists()
