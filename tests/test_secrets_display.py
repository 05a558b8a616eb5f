"""Credentials never shown: database URLs masked (encoded, unencoded and query-string
passwords, empty users), error text scrubbed of the password in any encoding, secret-named
settings masked; ``ccrl status`` and ``ccrl doctor`` on an unreachable store say where it is
without the password."""

from __future__ import annotations

import array
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from ccrl.agent.core.secrets_display import MASK, is_secret_name, mask_setting, mask_url, scrub_password, scrub_urls

# (URL, its secret as written (then decoded, when that differs), the URL as shown)
URLS = [
    ("postgresql+psycopg://ccrl:p%40ss%2Fw0rd@db.example:5432/ccrl", ["p%40ss%2Fw0rd", "p@ss/w0rd"],
     "postgresql+psycopg://ccrl:***@db.example:5432/ccrl"),
    ("postgresql://user:p@ss@db.example/ccrl", ["p@ss"], "postgresql://user:***@db.example/ccrl"),
    ("postgresql://user:pa/ss:w0rd@db.example:5432/ccrl?sslmode=require", ["pa/ss:w0rd"],
     "postgresql://user:***@db.example:5432/ccrl?sslmode=require"),
    ("redis://:hunter22@cache:6379/0", ["hunter22"], "redis://:***@cache:6379/0"),
    ("postgresql://:empty-user-pw@[::1]:5432/ccrl", ["empty-user-pw"], "postgresql://:***@[::1]:5432/ccrl"),
    ("postgresql://db.example/ccrl?user=ccrl&password=s3cr%20et&application_name=a@b",
     ["s3cr%20et", "s3cr et"], "postgresql://db.example/ccrl?user=ccrl&password=***&application_name=a@b"),
    ("postgresql://ccrl@db.example/ccrl?sslpassword=k3y%2Bv&sslmode=verify-full", ["k3y%2Bv", "k3y+v"],
     "postgresql://ccrl@db.example/ccrl?sslpassword=***&sslmode=verify-full"),
    ("mysql://u:a?b#c@db.example/x", ["a?b#c"], "mysql://u:***@db.example/x"),
    # typos SQLAlchemy rejects, quoting the whole string in its error
    ("postgresql//ccrl:s3cretpw@db.example/ccrl", ["s3cretpw"], "postgresql//ccrl:***@db.example/ccrl"),
    ("postgresql:/ccrl:s3cret/pw@db.example/ccrl", ["s3cret/pw"], "postgresql:/ccrl:***@db.example/ccrl"),
    ("ccrl:s3cretpw@db.example:5432", ["s3cretpw"], "ccrl:***@db.example:5432"),
    ("postgresql://u:p%3Aw%40rd@db.example/x?password=second%2F", ["p%3Aw%40rd", "p:w@rd", "second%2F", "second/"],
     "postgresql://u:***@db.example/x?password=***"),
]
NO_SECRET = [
    "/home/me@work/ccrl.db",
    "sqlite:////home/me@work/ccrl.db",
    "postgresql://ccrl@db.example:5432/ccrl",
    "postgresql://db.example/ccrl?application_name=a@b",
    "postgresql+psycopg://db.example/ccrl?sslmode=require&connect_timeout=5",
]


@pytest.mark.parametrize(("url", "secrets", "shown"), URLS)
def test_mask_url_hides_every_password_form(url, secrets, shown):
    masked = mask_url(url)
    assert masked == shown
    for secret in secrets:
        assert secret not in masked


@pytest.mark.parametrize("url", NO_SECRET)
def test_mask_url_leaves_urls_without_credentials_alone(url):
    assert mask_url(url) == url


@pytest.mark.parametrize(("url", "secrets", "shown"), URLS)
def test_error_text_is_scrubbed_of_the_password_in_any_encoding(url, secrets, shown):
    password = secrets[0]
    message = (f"cannot reach {url}: server said password {password!r} is wrong "
               f"(decoded {secrets[-1]}, encoded {quote(secrets[-1], safe='')}, form {quote_plus(secrets[-1])})")
    scrubbed = scrub_password(message, url)
    for secret in secrets:
        assert secret not in scrubbed
    assert shown in scrubbed and MASK in scrubbed


def test_scrubbing_finds_credentials_of_urls_and_parameters_it_was_not_given():
    text = ("copy from postgresql://alice:Tr0ub4dor%263@old.example/db failed; "
            "dsn host=new.example password='two words' sslpassword=zz; see https://example.com/a@b.com")
    scrubbed = scrub_urls(text)
    assert "Tr0ub4dor" not in scrubbed and "two words" not in scrubbed and "zz" not in scrubbed
    assert "postgresql://alice:***@old.example/db" in scrubbed and "host=new.example" in scrubbed
    assert "https://example.com/a@b.com" in scrubbed


# Passwords of any characters, written into the URL percent-encoded (as they must be) and
# unencoded (as people do): neither the masked URL nor a scrubbed message holds them.
PASSWORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs")), min_size=6,
                    max_size=40).filter(lambda p: "*" not in p)  # "***" is the mask itself


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS, user=st.sampled_from(["", "ccrl", "svc.account"]))
def test_any_percent_encoded_password_is_hidden(password, user):
    url = f"postgresql+psycopg://{user}:{quote(password, safe='')}@db.example:5432/ccrl"
    masked = mask_url(url)
    assert masked == f"postgresql+psycopg://{user}:***@db.example:5432/ccrl"
    message = scrub_password(f"auth failed for {password} ({url}) {quote_plus(password)}", url)
    assert password not in message and quote(password, safe="") not in message
    assert quote_plus(password) not in message


@settings(max_examples=300, deadline=None)
@given(password=st.text(alphabet="abcXYZ0129@:/!$%&()+,;=-_.~", min_size=6, max_size=30))
def test_any_unencoded_password_is_hidden(password):
    url = f"postgresql://ccrl:{password}@db.example:5432/ccrl"
    assert mask_url(url) == "postgresql://ccrl:***@db.example:5432/ccrl"
    assert password not in scrub_password(f"connecting to {url} with {password}", url)


def test_secret_setting_names():
    for name in ("api_key", "hf_token", "sslpassword", "password", "db_password", "client_secret", "apikey",
                 "train.hub_token", "passphrase", "aws_secret_access_key", "credentials"):
        assert is_secret_name(name), name
    for name in ("database_url", "max_tokens", "tool_result_tokens", "keep_model_versions", "monkey", "keyboard",
                 "max_prompt_tokens", "home", "tokenizer"):
        assert not is_secret_name(name), name
    assert mask_setting("api_key", "sk-abc") == MASK and mask_setting("api_key", None) is None
    assert mask_setting("database_url", URLS[0][0]) == URLS[0][2]
    assert mask_setting("lora_r", 16) == 16


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("template", ["postgresql+psycopg://ccrl:{encoded}@127.0.0.1:{port}/ccrl",
                                      "postgresql//ccrl:{raw}@127.0.0.1:{port}/ccrl"])
def test_status_and_doctor_on_an_unreachable_store_hide_the_password(ccrl_home, template):
    """The commands that name the store (one that refuses connections, one whose URL is a typo
    SQLAlchemy rejects, quoting it): its URL is shown masked, the error is scrubbed, in text
    and JSON."""
    password = "p@ss/w0rd:x"
    url = template.format(encoded=quote(password, safe=""), raw=password, port=_closed_port())
    env = {**os.environ, "CCRL_HOME": str(ccrl_home), "CCRL_DATABASE_URL": url, "COLUMNS": "300"}
    ccrl = str(Path(sys.executable).parent / "ccrl")
    for args in (["status", "--json"], ["status"], ["doctor", "--json"], ["doctor"], ["config", "show"],
                 ["config", "show", "--json"]):
        result = subprocess.run([ccrl, *args], capture_output=True, text=True, env=env, timeout=120)
        output = result.stdout + result.stderr
        for form in (password, quote(password, safe=""), quote(password), quote_plus(password), "p@ss", "w0rd"):
            assert form not in output, (args, form, output)
        assert "127.0.0.1" in output, (args, output)
    if "://" not in url:
        return
    report = json.loads(subprocess.run([ccrl, "status", "--json"], capture_output=True, text=True, env=env,
                                       timeout=120).stdout)
    assert report["database_url"].startswith("postgresql+psycopg://ccrl:***@127.0.0.1:")


@pytest.fixture
def restore_logging():
    yield
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


SECRET_IN_ERROR = "Could not parse SQLAlchemy URL from string 'postgresql//ccrl:s3cretpw@db.example/ccrl'"


def _log_credentials() -> None:
    log = structlog.get_logger("ccrl.test")
    log.error("store unreachable", url="postgresql://ccrl:s3cretpw@db.example/ccrl", dsn="host=db password=s3cretpw")
    try:
        raise ValueError(SECRET_IN_ERROR)
    except ValueError:
        log.exception("job failed", job="ingest")
    logging.getLogger("apscheduler").error("job raised %s", SECRET_IN_ERROR)


@pytest.fixture
def store_url(ccrl_home, monkeypatch):
    """The agent's store is the (malformed) URL of SECRET_IN_ERROR."""
    from ccrl.agent.core.config import reset_settings_cache

    monkeypatch.setenv("CCRL_DATABASE_URL", "postgresql//ccrl:s3cretpw@db.example/ccrl")
    reset_settings_cache()


@pytest.mark.parametrize("mode", ["prefixed", "plain", "console"])
def test_logs_carry_no_credentials(mode, store_url, restore_logging):
    """The store's password, even in a URL too malformed to be recognised, and the credentials
    of any URL or password= value: gone from every log line and traceback."""
    from ccrl.agent.core.logging_setup import configure_logging

    stream = io.StringIO()
    configure_logging(mode=mode, stream=stream)
    _log_credentials()
    out = stream.getvalue()
    assert "s3cretpw" not in out and "store unreachable" in out and "job failed" in out
    assert "db.example" in out and "ValueError" in out


def test_journal_entries_carry_no_credentials(tmp_path, store_url, restore_logging):
    from ccrl.agent.core.logging_setup import configure_logging

    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        assert configure_logging(mode="journal", journal_socket=path, stream=io.StringIO()) == "journal"
        _log_credentials()
        entries = []
        for _ in range(3):
            data, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            if ancdata:  # a big entry travels in a memfd
                fd = array.array("i", ancdata[0][2][:4])[0]
                data = os.pread(fd, os.fstat(fd).st_size, 0)
                os.close(fd)
            entries.append(data)
    blob = b"".join(entries)
    assert b"s3cretpw" not in blob and b"db.example" in blob and b"job failed" in blob
