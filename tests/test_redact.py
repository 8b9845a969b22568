"""redact()'s fast path for plain URLs gives exactly what the full parse gives."""

from urllib.parse import urlsplit

from hypothesis import given, settings, strategies as st

from ocrd_models.modelsync import urls


def _slow(url: str) -> str:
    # The full path of redact(), forced by pretending no URL is plain.
    orig = urls._plain_http_url
    urls._plain_http_url = lambda u: False
    try:
        return urls.redact(url)
    finally:
        urls._plain_http_url = orig


CASES = ["http://a.b/x", "http://A.b/x", "https://a:443/x", "https://a:0443/x", "http://a:/x", "http://a.b",
         "https://u:p@a/x", "http://a/x?token=1&b=2", "file:///x", "/abs/x", "HTTP://a/x", "http://a/x#f",
         "http://a/%41", "https://github.com/OCR-D/models/releases/download/v1/x.tar.gz", "http://[::1]:80/x"]


def test_known_urls_agree():
    for url in CASES:
        assert urls.redact(url) == _slow(url), url


def test_credentials_never_survive():
    assert urls.redact("https://user:secret@host/x?token=abc&keep=1") == "https://host/x?keep=1"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["http://", "https://", "HTTP://"]),
       st.text(alphabet="aZ0.-:@", min_size=1, max_size=12),
       st.text(alphabet="ab/%?#=&.", max_size=12))
def test_fast_path_is_exact(scheme, host, path):
    url = f"{scheme}{host}/{path}"
    try:
        urlsplit(url).port
    except ValueError:
        return  # the manifest refuses such URLs before redact sees them
    try:
        expected = _slow(url)
    except ValueError:
        return
    assert urls.redact(url) == expected
